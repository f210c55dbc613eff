"""Job options: one dataclass that the CLI and the Ray job script both build."""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vqpipe.defaults import VIDEO_FPS, default_batch_size
from vqpipe.errors import UserError
from vqpipe.media.decode import MediaLimits

POOL_KEYS = {
    "batch_size": "model inputs (images, or frames for image models) per forward pass",
    "num_gpus": "GPUs per actor (fractions share a GPU)",
    "num_cpus": "CPUs per actor",
    "actors": "actors in the pool: N or MIN-MAX (autoscaling)",
    "column": "prefix of this pool's output columns (default: the scorer's name)",
    "decode": "where JPEGs are decoded: cpu (decode tasks), gpu (the actor's device), auto "
    "(gpu for GPU pools whose scorer can)",
    "when": "score only the rows where this predicate over earlier pools' columns is true "
    "(e.g. when=gamma_score between 0.35 and 0.65; see docs/cascade.md)",
}
"""``--scorer`` keys that configure the pool rather than the scorer."""

_COLUMN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
DECODES = ("cpu", "gpu", "auto")
"""Values of the ``decode`` pool key."""


def parse_actors(text: str) -> tuple[int, int]:
    """``"4"`` → (4, 4); ``"1-8"`` → (1, 8) (the one syntax for a pool size)."""
    low, sep, high = str(text).strip().partition("-")
    try:
        pool = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise UserError(f"actors={text!r}: use N or MIN-MAX, e.g. actors=1-8") from None
    if pool[0] < 1 or pool[1] < pool[0]:
        raise UserError(f"actors={text!r}: need 1 <= MIN <= MAX")
    return pool


def split_options(text: str) -> list[str]:
    """``key=value`` parts split on the commas outside JSON brackets and quotes, so that
    ``storage_options={"key": "a", "secret": "b"},batch_size=8`` is two parts."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote and text[i - 1] != "\\" else quote
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _number(key: str, value: Any, kind: type, low: float, strict: bool = False) -> Any:
    try:
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r}: expected {kind.__name__}") from None
    if number < low or (strict and number == low):
        raise UserError(f"{key}={value!r}: must be {'>' if strict else '>='} {low}")
    return number


@dataclass
class ScorerOptions:
    """One scorer pool of a job: registry name, the scorer's options and the pool settings.

    ``column`` is the prefix of the pool's output columns (``gamma`` → ``gamma_score``); two
    pools of one scorer need different columns.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = None  # type: ignore[assignment]  # None: the scorer's and device's default
    num_gpus: float = 0.0
    actors: tuple[int, int] = (1, 1)
    num_cpus: float | None = None  # per actor; None: 1 with a GPU, else a share of one CPU
    column: str = ""
    decode: str = "cpu"  # cpu | gpu | auto: see :func:`vqpipe.pipeline.stages.decodes_on_device`
    when: str | None = None  # cascade: see :mod:`vqpipe.pipeline.cascade`
    kwargs: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    """The scorer's constructor arguments once resolved (:meth:`JobConfig.resolved`, on the
    driver): the decode tasks and actors receive them with the pool and use them as they are."""

    def __post_init__(self) -> None:
        self.column = self.column or self.name.lower().replace("-", "_")
        self.actors = tuple(self.actors)  # type: ignore[assignment]
        if self.batch_size is None:
            self.batch_size = self.default_batch_size()

    def default_batch_size(self) -> int:
        """The batch size of :data:`vqpipe.defaults.DEFAULT_BATCH_SIZES` for this scorer (and
        task) on the pool's device: ``device=`` when the options set it, else CUDA when the
        pool asks for GPUs."""
        device = str(self.options.get("device") or "auto")
        if not device.startswith(("cuda", "cpu")):
            device = "cuda" if self.num_gpus else "cpu"
        return default_batch_size(self.name, device, self.options.get("task"))

    @classmethod
    def parse(cls, text: str, **defaults: Any) -> ScorerOptions:
        """``"gamma"`` or ``"gamma:checkpoint=s3://m/g.pth,scene=face-quality,batch_size=128"``.

        The keys of :data:`POOL_KEYS` configure the pool; every other key goes to the scorer
        (values parsed as JSON when they are JSON, else strings; a part without ``=`` after a
        scorer option continues its value: ``tasks=quality,aesthetics`` is one option).
        ``defaults`` (the job's global flags: ``batch_size``, ``num_gpus``, ``actors``) apply to
        the pool keys the text does not set: per-scorer keys win.
        """
        name, _, rest = text.partition(":")
        if not name.strip():
            raise UserError(f"--scorer {text!r}: no scorer name before ':'")
        pool: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
        raw: dict[str, str] = {}
        last = None
        for part in filter(None, (p.strip() for p in split_options(rest))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep and last is not None and last not in POOL_KEYS:
                raw[last] += f",{part}"  # a list value: tasks=quality,aesthetics
                continue
            if not sep or not key:
                raise UserError(f"--scorer {text!r}: option {part!r} is not key=value")
            if key in POOL_KEYS:
                pool[key] = value.strip()
            else:
                raw[key] = value
            last = key
        options = {key: _parse_value(value) for key, value in raw.items()}
        spec = cls(name=name.strip(), options=options)
        if "num_gpus" in pool:
            spec.num_gpus = _number("num_gpus", pool["num_gpus"], float, 0)
        if "batch_size" in pool:
            spec.batch_size = _number("batch_size", pool["batch_size"], int, 1)
        else:  # the device is known now
            spec.batch_size = spec.default_batch_size()
        if "num_cpus" in pool:
            spec.num_cpus = _number("num_cpus", pool["num_cpus"], float, 0, strict=True)
        if "actors" in pool:
            actors = pool["actors"]
            spec.actors = actors if isinstance(actors, tuple) else parse_actors(actors)
        if "column" in pool:
            if not _COLUMN.fullmatch(pool["column"]):
                raise UserError(
                    f"column={pool['column']!r}: use letters, digits and '_', starting with "
                    "a letter"
                )
            spec.column = pool["column"]
        if "decode" in pool:
            if pool["decode"] not in DECODES:
                raise UserError(f"decode={pool['decode']!r}: use {', '.join(DECODES)}")
            spec.decode = pool["decode"]
        if "when" in pool:
            from vqpipe.pipeline.cascade import parse_when

            spec.when = parse_when(pool["when"]).text.strip()
        return spec

    def scorer_class(self) -> type:
        from vqpipe.scorers.registry import get_scorer_spec

        return get_scorer_spec(self.name).load()

    def outputs(self) -> dict[str, str]:
        """The pool's per-item outputs, name → ``float`` | ``probs`` (the scorer's
        :meth:`~vqpipe.scoring.Scorer.outputs` for its options); each is written to the
        column ``<column>_<name>``."""
        return self.scorer_class().outputs(**self.options)

    def scorer_kwargs(self, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The scorer's constructor arguments: registry defaults, its options, and the job's
        storage options (under its own ``storage_options``, which win key by key) when the
        scorer takes them. The one place that builds them; a pool resolved by the driver
        (:attr:`kwargs`) returns its resolved arguments, so workers never rebuild them."""
        if self.kwargs is not None:
            return dict(self.kwargs)
        return self._build_kwargs(storage_options)

    def _build_kwargs(self, storage_options: dict[str, Any] | None) -> dict[str, Any]:
        from vqpipe.scorers.registry import get_scorer_spec

        registered = get_scorer_spec(self.name)
        kwargs = {**registered.defaults, **self.options}
        if accepts_keyword(registered.load(), "storage_options"):
            merged = {**(storage_options or {}), **(kwargs.get("storage_options") or {})}
            if merged:
                kwargs["storage_options"] = merged
        return kwargs

    def __repr__(self) -> str:  # never print a scorer's storage secrets
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_metadata().items())
        return f"ScorerOptions({fields})"

    def to_metadata(self) -> dict[str, Any]:
        """The pool as recorded: scorer-level storage options reduced to their key names."""
        data = asdict(self)
        data.pop("kwargs")  # derived (and holds the job's storage secrets)
        if "storage_options" in data["options"]:
            data["options"]["storage_options"] = sorted(data["options"]["storage_options"] or {})
        return data


def exact_preprocessing(cls: type, kwargs: dict[str, Any]) -> bool | None:
    """The ``exact_preprocessing`` a scorer gets from ``kwargs`` (its own default when they do
    not set it); None for a scorer without the option."""
    param = inspect.signature(cls.__init__).parameters.get("exact_preprocessing")
    if param is None:
        return None
    return bool(kwargs.get("exact_preprocessing", param.default))


def accepts_keyword(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name`` (explicitly or through ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _parse_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@dataclass
class JobConfig:
    """Everything a scoring job needs; ``to_metadata`` is what ``_job.json`` records."""

    input: str
    output: str
    scorers: list[ScorerOptions] = field(default_factory=lambda: [ScorerOptions("gamma")])
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    storage_options: dict[str, Any] = field(default_factory=dict)
    video_fps: float = VIDEO_FPS
    limits: MediaLimits = field(default_factory=MediaLimits)
    rows_per_file: int | None = None  # None: 50,000 per part of a listing, 256 per shard fragment
    limit: int | None = None
    resume: bool = True
    root: str | None = None  # manifests: entries must stay inside this prefix
    address: str | None = None  # Ray cluster to connect to (None: RAY_ADDRESS, else local)
    input_format: str = "auto"  # auto | files | manifest | webdataset | parquet
    uri_column: str = "uri"  # manifests: the column with the inputs' URIs
    media_column: str | None = None  # Parquet with media bytes: None finds it
    key_column: str | None = None  # Parquet with media bytes: the rows' key (else row index)
    since: float | None = None  # files: only objects modified after this POSIX time
    calibration: dict[str, Any] | None = None  # vqpipe calibrate's JSON: <column>_calibrated
    retry_errors: bool = False  # resume: score every error row again (else transient ones only)

    def resolved(self) -> JobConfig:
        """A copy whose pools carry their scorers' constructor arguments (resolved once, here:
        the job's driver calls this before anything is shipped to a worker)."""
        pools = [replace(s, kwargs=s._build_kwargs(self.storage_options)) for s in self.scorers]
        return replace(self, scorers=pools)

    def to_metadata(self) -> dict[str, Any]:
        """Job options without secrets (every storage options dict reduced to its key names)."""
        data = asdict(self)
        data["storage_options"] = sorted(self.storage_options)
        data["scorers"] = [s.to_metadata() for s in self.scorers]
        return data
