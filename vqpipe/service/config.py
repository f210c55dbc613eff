"""What a service is made of (:class:`ServiceConfig`), from the CLI or from a Serve config
file's ``args`` (:func:`config_from_args`); no Ray Serve import, so both are checked without
it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vqpipe.media.decode import MediaLimits
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.service.body import DEFAULT_MAX_ITEMS, DEFAULT_MAX_REQUEST_BYTES, REMOTE_SCHEMES

DEFAULT_BATCH_WAIT_MS = 10.0


@dataclass
class ServiceConfig:
    """Everything a service is made of (the CLI and :func:`config_from_args` build it)."""

    scorers: list[ScorerOptions]
    storage_options: dict[str, Any] = field(default_factory=dict)
    limits: MediaLimits = field(default_factory=MediaLimits)
    video_fps: float = 1.0
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_items: int = DEFAULT_MAX_ITEMS
    uri_prefixes: tuple[str, ...] = REMOTE_SCHEMES


ARG_KEYS = frozenset(
    {"scorers"}
    | {f.name for f in dataclasses.fields(ServiceConfig)} - {"limits"}
    | {f.name for f in dataclasses.fields(MediaLimits)}
)
"""The keys a Serve config's ``args`` may have."""


def config_from_args(args: dict[str, Any]) -> ServiceConfig:
    """A Serve config's ``args`` (a RayService's ``serveConfigV2``) → the config: ``scorers``
    (``--scorer`` specs; default gamma), and optionally ``batch_wait_ms``,
    ``max_request_bytes``, ``max_items``, ``uri_prefixes`` (added to the object stores),
    ``storage_options``, ``video_fps`` and the media limits (``max_bytes``, ``max_pixels``,
    ``read_timeout_s``, ``max_frames``, ...). An unknown key is a ``ValueError``."""
    unknown = sorted(set(args) - ARG_KEYS)
    if unknown:
        raise ValueError(f"unknown service args {unknown}; known: {sorted(ARG_KEYS)}")
    args = dict(args)
    specs = [ScorerOptions.parse(text) for text in args.pop("scorers", None) or ["gamma"]]
    names = {f.name for f in dataclasses.fields(MediaLimits)}
    limits = MediaLimits(**{k: args.pop(k) for k in list(args) if k in names})
    if "uri_prefixes" in args:
        args["uri_prefixes"] = (*REMOTE_SCHEMES, *args["uri_prefixes"])
    return ServiceConfig(scorers=specs, limits=limits, **args)


def replica_options(spec: ScorerOptions) -> dict[str, Any]:
    """A column's deployment options: fixed replicas (``actors=N``) or autoscaling between
    ``actors=MIN-MAX`` on requests in flight; GPUs and CPUs per replica; enough requests in
    flight per replica to fill a batch twice."""
    low, high = spec.actors
    options: dict[str, Any] = {
        "name": f"scorer_{spec.column}",
        "ray_actor_options": {
            "num_cpus": spec.num_cpus if spec.num_cpus is not None else 1.0,
            "num_gpus": spec.num_gpus,
        },
        "max_ongoing_requests": max(2 * spec.batch_size, 16),
    }
    if low == high:
        options["num_replicas"] = low
    else:
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": max(spec.batch_size, 2),
        }
    return options
