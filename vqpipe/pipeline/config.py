"""Job options: one dataclass that the CLI and the Ray job script both build."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from vqpipe.media.decode import MediaLimits


@dataclass
class ScorerOptions:
    """One scorer of a job: registry name, its constructor options and its pool settings."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    num_gpus: float = 0.0
    actors: tuple[int, int] = (1, 1)
    num_cpus: float | None = None  # per actor; None: 1 with a GPU, else a share of one CPU

    @property
    def column(self) -> str:
        """Prefix of this scorer's output columns (``gamma`` → ``gamma_score``)."""
        return self.name.lower().replace("-", "_")

    @classmethod
    def parse(cls, text: str) -> ScorerOptions:
        """``"gamma"`` or ``"gamma:checkpoint=s3://m/g.pth,scene=face-quality,batch_size=128"``.

        ``batch_size``, ``num_gpus``, ``num_cpus`` and ``actors`` (``min-max``) configure the
        pool; every other key goes to the scorer (values parsed as JSON when they are JSON,
        else strings).
        """
        name, _, rest = text.partition(":")
        spec = cls(name=name.strip())
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"scorer option {part!r} in {text!r} is not key=value")
            key = key.strip()
            if key == "batch_size":
                spec.batch_size = int(value)
            elif key == "num_gpus":
                spec.num_gpus = float(value)
            elif key == "num_cpus":
                spec.num_cpus = float(value)
            elif key == "actors":
                low, _, high = value.partition("-")
                spec.actors = (int(low), int(high or low))
            else:
                spec.options[key] = _parse_value(value)
        return spec


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
    video_fps: float = 1.0
    limits: MediaLimits = field(default_factory=MediaLimits)
    rows_per_file: int = 256
    limit: int | None = None
    resume: bool = True
    root: str | None = None  # manifests: entries must stay inside this prefix

    def to_metadata(self) -> dict[str, Any]:
        """Job options without secrets (storage options are reduced to their key names)."""
        data = asdict(self)
        data["storage_options"] = sorted(self.storage_options)
        return data
