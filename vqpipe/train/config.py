"""The config keys of each training method, in one place, and the check that runs before Ray.

:data:`KEYS` holds, per method, every key its loop reads with its kind and default (the loops
read their defaults from here through :func:`setting`); :data:`DATASET_KEYS` the keys of one
``datasets`` entry; :data:`REQUIRED_COLUMNS` the MOS-table columns each method needs and
:data:`MEDIA` the media it reads.
:func:`check_config` validates a config against them — required and unknown keys ("did you
mean"), kinds and choices, every table readable with its columns and training rows — and raises
one :class:`ConfigError` that lists every problem, before any Ray start-up.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vqpipe.errors import UserError
from vqpipe.prompts import QALIGN_TASKS

log = logging.getLogger("vqpipe.train")


class ConfigError(UserError, ValueError):
    """A training config that cannot run; the message lists every problem found."""


@dataclass(frozen=True)
class Key:
    """One config key: its ``kind`` (see :data:`KINDS`), default, allowed values (``choices``,
    or ``check``: value → a problem or None); ``null`` is allowed where the default is None or
    ``nullable``; ``help``: one line for ``docs/training.md`` (:func:`markdown`)."""

    kind: str
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    nullable: bool = False
    help: str = ""
    hint: str = ""
    """Said after ``missing required key`` (what to give, where to get it)."""


def _dtype_problem(value: str) -> str | None:
    import torch

    from vqpipe.models.devices import resolve_dtype

    try:
        resolve_dtype(value, torch.device("cpu"))
    except ValueError as exc:
        return str(exc)
    return None


def _is_table(v: Any) -> bool:
    import pandas as pd

    return isinstance(v, (str, os.PathLike, pd.DataFrame))


KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "path": ("a path or URI", lambda v: isinstance(v, (str, os.PathLike))),
    "mapping": ("a mapping", lambda v: isinstance(v, Mapping)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "deepspeed": ("true or a mapping", lambda v: isinstance(v, (bool, Mapping))),
    "table": ("a table path / URI (or a DataFrame)", _is_table),
}
"""kind → (how an error message names it, the test a value must pass)."""

COMMON_KEYS = {
    "datasets": Key("list", required=True, help="MOS tables to train on (keys below)"),
    "storage_options": Key("mapping", help="fsspec options for s3:// tables, images, checkpoints"),
    "seed": Key("int", 0, help="seed of sampling, crops and pairs"),
    "lr": Key("number", 2e-5, help="learning rate (Adam / AdamW)"),
    "weight_decay": Key("number", 0.0, help="weight decay"),
    "max_steps": Key("int", help="stop after this many optimizer steps"),
    "device": Key("str", help="torch device (default: cuda if available, else cpu)"),
    "output": Key("path", help="write the final model here, with training_args.json beside it"),
    "validate": Key("bool", True, help="SRCC/PLCC on each table's val split every epoch"),
    "early_stop_patience": Key("int", help="stop after this many epochs without a better SRCC"),
    "checkpoint_every": Key("int", 1, help="save a checkpoint every this many epochs"),
    "checkpoint_dir": Key("path", help="where checkpoints go outside Ray Train"),
    "resume": Key(
        "bool",
        True,
        help="continue from the run's latest checkpoint (Ray Train: same storage path and "
        "name); false: start over (`vqpipe train --no-resume`)",
    ),
    "resume_from": Key("path", help="a checkpoint directory to resume from"),
    "verbose": Key("bool", False, help="print each epoch's metrics as JSON (outside Ray Train)"),
    "stream": Key("bool", False, help="stream and decode the training media with Ray Data"),
    "freeze_patch_embed": Key("bool", False, help="keep the vision patch embedding fixed"),
}
LMM_KEYS = {
    **COMMON_KEYS,
    "checkpoint": Key(
        "path",
        required=True,
        help="the model directory to fine-tune (weights, tokenizer, preprocessor)",
        hint="the model directory to fine-tune (e.g. a download of q-future/one-align); "
        "there is no bundled one",
    ),
    "epochs": Key("int", 2, help="epochs (both recipes)"),
    "warmup": Key("number", 0.03, help="linear warmup, fraction of the steps"),
    "freeze_vision": Key("bool", False, help="keep the vision tower fixed"),
    "gradient_checkpointing": Key("bool", False, help="recompute activations (less memory)"),
    "dtype": Key("str", check=_dtype_problem, help="bf16 on GPU, fp32 on CPU when not given"),
    "deepspeed": Key(
        "deepspeed", help="true, or {stage: 2 | 3, offload: bool}: ZeRO on GPUs (true: stage 3)"
    ),
    "video_fps": Key("number", 1.0, help="frames per second sampled from training videos"),
    "max_frames": Key("int", 8, help="at most this many frames per video"),
}
KEYS: dict[str, dict[str, Key]] = {
    "gamma": {
        **COMMON_KEYS,
        "checkpoint": Key(
            "path",
            help="the Gamma .safetensors to fine-tune (default: the bundled demo checkpoint, "
            "unless model_config is given)",
        ),
        "model_config": Key("mapping", help="a GammaConfig: train a new, random model instead"),
        "epochs": Key("int", 10, help="epochs"),
        "batch_size": Key("int", 8, help="images per step and worker"),
        "warmup": Key("number", 0.0, help="linear warmup, fraction of the steps"),
        "train_backbone": Key("bool", False, help="train CLIP too (the recipe freezes it)"),
        "save_dtype": Key(
            "str", "float32", choices=("float32", "float16"), help="dtype of the output file"
        ),
        "cosine": Key("bool", False, help="cosine learning-rate decay after warmup"),
        "level_loss_weight": Key("number", 0.0, help="> 0 adds the soft level loss (scratch)"),
        "patch_init": Key("str", choices=("dct",), help="dct: DCT patch embedding (new model)"),
        "crop_step": Key("int", 8, help="random crops on this pixel grid (8: the JPEG block)"),
        "augment": Key("bool", True, help="random crops and flips (else the centre crop)"),
        "split": Key("str", "train", nullable=True, help="split to train on; null: all rows"),
        "num_workers": Key("int", 0, help="DataLoader worker processes"),
    },
    "qalign": {
        **LMM_KEYS,
        "task": Key(
            "str", "quality", choices=tuple(QALIGN_TASKS), help="quality, aesthetics or video"
        ),
        "batch_size": Key("int", 32, help="examples per step and worker (OneAlign: 32/GPU)"),
    },
    "compare2score": {
        **LMM_KEYS,
        "n_pairs": Key("int", 1000, help="image pairs drawn per epoch"),
        "anchors": Key("path", help="validation anchor set (default: picked from train rows)"),
        "batch_size": Key("int", 8, help="pairs per step and worker (64 on 8 GPUs)"),
    },
}
"""Method → every config key its loop reads."""

DATASET_KEYS: dict[str, dict[str, Key]] = {
    method: {
        "table": Key("table", required=True, help="a MOS table (csv / parquet / json, or URI)"),
        "image_root": Key(
            "path", help="folder or URI prefix of relative paths (default: the table's folder)"
        ),
        "weight": Key("number", 1.0, help="this dataset's share of the sampling"),
        # Gamma: the config's ``split`` when not given; null: all rows
        "split": Key("str", "train", nullable=True, help="split to train on; null: all rows"),
        **(
            {"scene": Key("str", help="scene prompt (default: by dataset name)")}
            if method == "gamma"
            else {}
        ),
    }
    for method in KEYS
}
"""Method → the keys of one ``datasets`` entry."""

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "gamma": ("path", "mos"),
    "qalign": ("path", "mos", "scale_low", "scale_high"),
    "compare2score": ("path", "mos", "std", "dataset"),
}
"""Method → the MOS-table columns its examples are built from."""

MEDIA: dict[str, frozenset[str]] = {
    "gamma": frozenset({"image"}),
    "qalign": frozenset({"image", "video"}),
    "compare2score": frozenset({"image", "video"}),
}
"""Method → the media its loop reads (rows of other media are skipped, counted and logged)."""


SCOPES: dict[str, dict[str, Key]] = {"common": COMMON_KEYS, "lmm": LMM_KEYS, **KEYS}
"""Where :func:`setting` looks a default up: a method, or the keys every (LMM) method shares."""


def setting(config: Mapping[str, Any], scope: str, name: str) -> Any:
    """``config[name]``, else its default in ``scope`` (a method, ``"lmm"`` or ``"common"``)."""
    return config.get(name, SCOPES[scope][name].default)


def dataset_setting(spec: Mapping[str, Any], method: str, name: str) -> Any:
    """A ``datasets`` entry's ``name``, else its default."""
    return spec.get(name, DATASET_KEYS[method][name].default)


def dataset_split(config: Mapping[str, Any], spec: Mapping[str, Any], method: str) -> Any:
    """The split a ``datasets`` entry trains on: its own, else (Gamma) the config's, else
    the default; None means every row."""
    if "split" in spec:
        return spec["split"]
    if method == "gamma":
        return setting(config, method, "split")
    return dataset_setting(spec, method, "split")


def start_from(method: str, config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Where a run's weights come from: (the config to run, one line that says so).

    Gamma without ``checkpoint`` or ``model_config`` starts from the bundled demo checkpoint,
    whose path is written into the returned config (so the run's recorded config names it);
    ``model_config`` alone builds a new, randomly initialised model. The LMMs need
    ``checkpoint`` (:func:`check_config` refuses a config without it)."""
    config = dict(config)
    if config.get("checkpoint"):
        return config, f"fine-tuning {method} from {config['checkpoint']}"
    if method != "gamma":
        return config, f"training {method}"
    if config.get("model_config") is not None:
        return config, "training a new, randomly initialised gamma model (model_config)"
    from vqpipe.scorers.gamma import demo_checkpoint

    config["checkpoint"] = str(demo_checkpoint())
    return config, (
        f"no checkpoint in the config: fine-tuning the bundled demo {config['checkpoint']} "
        "(a small model trained on synthetic images; set checkpoint: to your Gamma weights)"
    )


def absolute_paths(method: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with relative local paths made absolute against this process's working
    directory, where the user wrote them (Ray Train workers run elsewhere): those that exist
    here (``checkpoint``, each table and ``image_root``, ...; a name that is not a local path,
    such as a Hub id, stays as it is) and the outputs (``output``, ``checkpoint_dir``)."""

    def absolute(value: Any, made: bool = False) -> Any:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or "://" in value or os.path.isabs(value):
            return value
        return os.path.abspath(value) if made or os.path.exists(value) else value

    paths = {n for n, k in KEYS[method].items() if k.kind == "path"}
    made = {"output", "checkpoint_dir"}
    out = {k: absolute(v, k in made) if k in paths else v for k, v in config.items()}
    if isinstance(out.get("datasets"), list):
        out["datasets"] = [
            {k: absolute(v) if k in ("table", "image_root") else v for k, v in spec.items()}
            if isinstance(spec, Mapping)
            else spec
            for spec in out["datasets"]
        ]
    return out


def _cell(key: Key) -> str:
    if key.required:
        return "required"
    if key.default is None:
        return "unset"
    value = str(key.default).lower() if isinstance(key.default, bool) else repr(key.default)
    return f"`{value.strip(chr(39))}`"


def _table(keys: Mapping[str, Key]) -> list[str]:
    lines = ["| key | default | kind | what |", "|---|---|---|---|"]
    for name, key in keys.items():
        kind = KINDS[key.kind][0]
        if key.choices:
            kind = " \\| ".join(f"`{c}`" for c in key.choices)
        lines.append(f"| `{name}` | {_cell(key)} | {kind} | {key.help} |")
    return lines


def markdown() -> str:
    """Every training key with its default, as the Markdown tables in ``docs/training.md``
    (``python -m vqpipe.train.config --markdown``; a test keeps the page equal to this)."""

    def only(keys: Mapping[str, Key], shared: Mapping[str, Key]) -> dict[str, Key]:
        return {k: v for k, v in keys.items() if k not in shared or shared[k] != v}

    sections = [
        ("Every method", COMMON_KEYS),
        ("Gamma", only(KEYS["gamma"], COMMON_KEYS)),
        ("Q-Align and Compare2Score", only(LMM_KEYS, COMMON_KEYS)),
        ("Q-Align only", only(KEYS["qalign"], LMM_KEYS)),
        ("Compare2Score only", only(KEYS["compare2score"], LMM_KEYS)),
        ("One `datasets` entry (`scene`: Gamma only)", DATASET_KEYS["gamma"]),
    ]
    out: list[str] = []
    for title, keys in sections:
        out += [f"#### {title}", "", *_table(keys), ""]
    return "\n".join(out)


def unknown_key(name: str, known: Any, where: str = "") -> str:
    """``unknown key 'x'`` with a "did you mean" for a close known key."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}unknown key {name!r}{hint}"


def _check_keys(values: Any, keys: dict[str, Key], where: str) -> list[str]:
    problems = []
    for name in values:
        if name not in keys:
            problems.append(unknown_key(name, keys, where))
    for name, key in keys.items():
        if name not in values or values[name] is None:
            if key.required:
                hint = f": {key.hint}" if key.hint else ""
                problems.append(
                    f"{where}missing required key {name!r} ({KINDS[key.kind][0]}){hint}"
                )
            elif name in values and key.default is not None and not key.nullable:
                problems.append(f"{where}{name!r} must be {KINDS[key.kind][0]}, not null")
            continue
        value = values[name]
        label, test = KINDS[key.kind]
        if not test(value):
            problems.append(
                f"{where}{name!r} must be {label}, got {type(value).__name__} {value!r}"
            )
        elif key.choices is not None and value not in key.choices:
            options = ", ".join(map(repr, key.choices))
            problems.append(f"{where}{name!r} must be one of {options}, got {value!r}")
        elif key.check is not None and (problem := key.check(value)):
            problems.append(f"{where}{name!r}: {problem}")
    return problems


def check_config(method: str, config: Any) -> list[str]:
    """Validate ``config`` for ``method`` before anything starts; returns the notes about
    skipped rows (also logged) and raises :class:`ConfigError` naming every problem."""
    if method not in KEYS:
        raise ConfigError(f"unknown training method {method!r}; choose one of {sorted(KEYS)}")
    if config is None:  # an empty YAML file
        config = {}
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"the config must be a mapping of keys (datasets, epochs, ...), got "
            f"{type(config).__name__}"
        )
    problems = _check_keys(config, KEYS[method], "")
    datasets = config.get("datasets")
    if isinstance(datasets, list) and not datasets:
        problems.append("'datasets' is empty: give at least one {table: ...}")
    specs = []
    for i, spec in enumerate(datasets if isinstance(datasets, list) else []):
        where = f"datasets[{i}]: "
        if not isinstance(spec, Mapping):
            problems.append(f"{where}must be a mapping like {{table: mos.csv}}, got {spec!r}")
            continue
        found = _check_keys(spec, DATASET_KEYS[method], where)
        problems += found
        if not found:
            specs.append((where, spec))
    if method == "gamma":
        problems += _check_scenes(specs)
        if config.get("checkpoint") and config.get("model_config") is not None:
            problems.append(
                "give 'checkpoint' (fine-tune it) or 'model_config' (a new, random model), not both"
            )
    if problems:
        raise ConfigError(_joined(problems))
    notes, rows = [], 0
    for where, spec in specs:
        count, note, problem = _check_table(method, config, spec, where)
        rows += count
        if note:
            notes.append(note)
        if problem:
            problems.append(problem)
    if not problems and rows == 0:
        problems.append("no training rows in any dataset: check the tables and split names")
    if problems:
        raise ConfigError(_joined(problems))
    for note in notes:
        log.warning(note)
    return notes


def _joined(problems: list[str]) -> str:
    head = "invalid training config"
    if len(problems) == 1:
        return f"{head}: {problems[0]}"
    return f"{head} ({len(problems)} problems): " + "; ".join(problems)


def _check_scenes(specs: list[tuple[str, Mapping[str, Any]]]) -> list[str]:
    from vqpipe.prompts import scene_prompts

    problems = []
    for where, spec in specs:
        if spec.get("scene") is not None:
            try:
                scene_prompts(spec["scene"])
            except ValueError as exc:
                problems.append(f"{where}{exc}")
    return problems


def _check_table(
    method: str, config: Mapping[str, Any], spec: Mapping[str, Any], where: str
) -> tuple[int, str | None, str | None]:
    """(training rows, a note about skipped rows, a problem) for one dataset entry."""
    from vqpipe.train.tables import check_table

    split = dataset_split(config, spec, method)
    return check_table(
        spec,
        config.get("storage_options"),
        method,
        REQUIRED_COLUMNS[method],
        MEDIA[method],
        split,
        where,
    )


def media_rows(table: Any, method: str) -> tuple[Any, Any]:
    """(rows ``method`` can take, rows it cannot) of a MOS table, by each path's media type."""
    from vqpipe.train.tables import rows_of_media  # pandas: not for ``vqpipe --help``

    return rows_of_media(table, MEDIA[method])


def skipped_note(skipped: Any, method: str, where: str) -> str:
    """The log line for rows skipped by :func:`media_rows`: how many, and the first files."""
    from vqpipe.train.tables import skipped_rows_note

    return skipped_rows_note(skipped, method, MEDIA[method], where)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m vqpipe.train.config --markdown")
    print(markdown(), end="")
