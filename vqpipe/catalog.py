"""``vqpipe scorers``: the registered scorers as a table, and one scorer's ``--scorer`` keys.

Reading a scorer's class attributes imports its module (and torch): fine here, never in
``--help``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from vqpipe.defaults import DEFAULT_BATCH_SIZE
from vqpipe.errors import UserError

POOL_DEFAULTS = {
    "batch_size": f"--batch-size, else per scorer and device (DEFAULT_BATCH_SIZES), else "
    f"{DEFAULT_BATCH_SIZE}",
    "num_gpus": "--num-gpus-per-actor, else 0",
    "num_cpus": "1 with a GPU, else 0.5",
    "actors": "--actors, else 1",
    "column": "the scorer's name",
    "decode": "cpu",
}
"""The default of each pool key (:data:`vqpipe.pipeline.config.POOL_KEYS`)."""

OPTION_NOTES = {
    "checkpoint": "weights: local path, fsspec URI or hub id",
    "device": "cuda / cpu; auto: the actor's GPU when it has one",
    "dtype": "bfloat16 / float16 / float32; auto: bf16 on CUDA, fp32 on CPU",
    "storage_options": "fsspec options for the checkpoint (over --storage-options)",
    "scene": "prompt set of the scene (README: Gamma)",
    "compile": "torch.compile the vision tower (Gamma: the model) at one batch shape",
    "vision_chunk": "frames per vision-tower call (default 64)",
    "fused_experts": "MoAE experts as two wide matmuls",
    "task": "quality / aesthetics / video (none: quality, unless tasks= is given)",
    "tasks": "several, one visual encoding: quality,aesthetics → <column>_<task>_score",
    "max_frames": "frames per video sequence (task=video)",
    "prefix_cache": "reuse the prompt's KV cache across a batch",
    "anchors": "anchor set (default: the bundled one)",
    "output": "thurstone (MAP score) or the soft-comparison mean",
    "cache_dir": "where downloaded weights are kept",
}
"""What the common constructor keywords mean (the others are described in the README)."""


def _checkpoint(cls: type) -> str:
    bundled = cls.bundled_checkpoint()
    default = cls.default_checkpoint()
    if default is None:
        return "none"
    if bundled is not None and str(default) == str(bundled):
        return f"bundled demo ({Path(str(bundled)).name})"
    return str(default)


def _rows() -> list[dict[str, str]]:
    from vqpipe.scorers.registry import get_scorer_spec, list_scorers

    rows = []
    for name in list_scorers():
        spec = get_scorer_spec(name)
        try:
            cls = spec.load()
        except Exception as exc:  # a plugin or optional dependency that does not import
            error = f"unavailable: {type(exc).__name__}: {exc}"
            rows.append({"name": name, "media": "?", "range": "?", "checkpoint": "?",
                         "description": error.splitlines()[0]})  # fmt: skip
            continue
        low, high = cls.score_range
        arrow = "↑" if cls.higher_better else "↓"
        rows.append(
            {
                "name": name,
                "media": ",".join(sorted(cls.media)),
                "range": f"{low:g}..{high:g} {arrow}",
                "checkpoint": _checkpoint(cls),
                "description": spec.description,
            }
        )
    return rows


def format_table() -> str:
    """One aligned row per registered scorer: name, media, score range (↑: higher is better),
    default checkpoint and description."""
    header = {
        "name": "NAME",
        "media": "MEDIA",
        "range": "SCORES",
        "checkpoint": "DEFAULT CHECKPOINT",
        "description": "DESCRIPTION",
    }
    rows = [header, *_rows()]
    if len(rows) == 1:
        return "no scorers registered"
    keys = list(header)
    widths = {k: max(len(r[k]) for r in rows) for k in keys[:-1]}
    lines = ["  ".join([*(r[k].ljust(widths[k]) for k in keys[:-1]), r[keys[-1]]]) for r in rows]
    lines.append("")
    lines.append("`vqpipe scorers NAME` lists a scorer's --scorer keys and their defaults.")
    return "\n".join(line.rstrip() for line in lines)


def _default_text(name: str, default: Any, cls: type) -> str:
    if name == "checkpoint":
        return _checkpoint(cls)
    if default is inspect.Parameter.empty:
        return "(required)"
    if default is None:
        return "auto" if name in ("device", "dtype") else "none"
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def scorer_keys(name: str) -> tuple[type, list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """The class and its ``--scorer`` keys: scorer options ``(key, default, note)`` from the
    constructor signature (registry defaults win), then the pool keys."""
    from vqpipe.pipeline.config import POOL_KEYS
    from vqpipe.pipeline.validate import scorer_options
    from vqpipe.scorers.registry import UnknownScorerError, get_scorer_spec

    try:
        spec = get_scorer_spec(name)
    except UnknownScorerError:
        import difflib

        from vqpipe.scorers.registry import list_scorers

        close = difflib.get_close_matches(name.lower(), list_scorers(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(
            f"unknown scorer {name!r}{hint} (known: {', '.join(list_scorers())})"
        ) from None
    cls = spec.load()
    options = []
    for key, param in scorer_options(cls).items():
        if param.kind is param.VAR_KEYWORD:
            options.append((f"**{key}", "", "further keys are passed to the scorer"))
            continue
        default = spec.defaults.get(key, param.default)
        options.append((key, _default_text(key, default, cls), OPTION_NOTES.get(key, "")))
    pool = [(key, POOL_DEFAULTS.get(key, ""), text) for key, text in POOL_KEYS.items()]
    return cls, options, pool


def format_scorer(name: str) -> str:
    """A scorer's facts and its ``--scorer NAME:KEY=VALUE,...`` keys with their defaults."""
    from vqpipe.scorers.registry import get_scorer_spec

    cls, options, pool = scorer_keys(name)
    spec = get_scorer_spec(name)
    low, high = cls.score_range
    lines = [
        f"{spec.name}: {spec.description}",
        f"  media: {', '.join(sorted(cls.media))}; scores {low:g}..{high:g}, "
        f"{'higher' if cls.higher_better else 'lower'} is better; version {cls.version}",
    ]
    if cls.prob_labels:
        lines.append(f"  {spec.name}_probs: {', '.join(cls.prob_labels)}")
    if cls.extra_outputs:
        extras = ", ".join(f"{spec.name}_{k}" for k in cls.extra_outputs)
        lines.append(f"  further columns: {extras}")
    width = max(len(k) for k, _, _ in options + pool)
    dwidth = max(len(d) for _, d, _ in options + pool)

    def table(rows: list[tuple[str, str, str]]) -> list[str]:
        return [f"  {k.ljust(width)}  {d.ljust(dwidth)}  {n}".rstrip() for k, d, n in rows]

    lines += ["", f"scorer options (--scorer {spec.name}:KEY=VALUE,...):", *table(options)]
    lines += ["", "pool options:", *table(pool)]
    lines += [
        "",
        f"e.g. --scorer {spec.name}:batch_size=32,actors=1-4 "
        "(values are JSON when they parse as JSON, else strings)",
    ]
    return "\n".join(lines)
