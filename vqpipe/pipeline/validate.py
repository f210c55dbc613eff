"""Checks of a job before anything starts: every user mistake becomes one :class:`UserError`.

:func:`validate_job` runs before Ray starts and creates nothing: scorer names (with "did you
mean"), option keys and values, duplicate output columns, the input, the output's
writability, each checkpoint (present and of a loadable kind, from its header), each
preprocessor. The last two (:func:`check_checkpoints`) load model code; a scoring job runs
them only once it knows it has work, so a resume with nothing left imports no torch.
:func:`check_cluster_resources` runs once Ray is up, before the dataset is built: a pool that
asks for more GPUs (or CPUs) per actor than any node has, on a cluster with no autoscaler that
could add such a node, would otherwise wait forever.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from pathlib import Path
from typing import Any

from vqpipe.errors import UserError
from vqpipe.io.fs import is_local, url_to_fs
from vqpipe.pipeline.cascade import check_cascades
from vqpipe.pipeline.config import POOL_KEYS, JobConfig, ScorerOptions
from vqpipe.schema import output_columns

_NOT_OPTIONS = ("self", "model")  # constructor parameters a job cannot set from the CLI


def storage_error(exc: BaseException, what: str) -> UserError:
    """A store error as one line; credentials problems get a hint."""
    name = type(exc).__name__
    hint = ""
    if "credential" in f"{name} {exc}".lower():
        hint = " (pass credentials in --storage-options, or configure the store's credentials)"
    return UserError(f"cannot access {what}: {name}: {exc}{hint}")


def scorer_options(cls: type) -> dict[str, inspect.Parameter]:
    """The options a scorer class takes (its constructor keywords, ``**kwargs`` included)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        k: p for k, p in params.items() if k not in _NOT_OPTIONS and p.kind is not p.VAR_POSITIONAL
    }


def _check_types(spec: ScorerOptions, params: dict[str, inspect.Parameter]) -> None:
    for key, value in spec.options.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"scorer {spec.name}: {key}={value!r} must be true or false")
        if (
            isinstance(default, (int, float))
            and not isinstance(default, bool)
            and not (isinstance(value, (int, float)) and not isinstance(value, bool))
        ):
            raise UserError(f"scorer {spec.name}: {key}={value!r} must be a number")


def check_scorer(spec: ScorerOptions, storage_options: dict[str, Any]) -> type:
    """Name, option keys, value types and the scorer's own option checks; returns the class."""
    from vqpipe.scorers.registry import UnknownScorerError, get_scorer_spec, list_scorers

    try:
        cls = get_scorer_spec(spec.name).load()
    except UnknownScorerError:
        known = list_scorers()
        close = difflib.get_close_matches(spec.name.lower(), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown scorer {spec.name!r}{hint} (known: {', '.join(known)})") from None
    params = scorer_options(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in spec.options:
        if key not in params and not takes_any:
            options = sorted(k for k, p in params.items() if p.kind is not p.VAR_KEYWORD)
            close = difflib.get_close_matches(key, [*options, *POOL_KEYS], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"scorer {spec.name}: unknown option {key!r}{hint} (scorer options: "
                f"{', '.join(options)}; pool options: {', '.join(POOL_KEYS)})"
            )
    _check_types(spec, params)
    options = {k: v for k, v in spec.options.items() if k != "storage_options"}
    try:
        cls.check_options(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"scorer {spec.name}: {exc}") from None
    if spec.options.get("storage_options") is not None and not isinstance(
        spec.options["storage_options"], dict
    ):
        raise UserError(f"scorer {spec.name}: storage_options must be a JSON object")
    return cls


def check_checkpoint(spec: ScorerOptions, cls: type, storage_options: dict[str, Any]) -> None:
    """The checkpoint is there and of a loadable kind (header only), and the decode stage's
    preprocessor can be built from it."""
    from vqpipe.io.checkpoints import probe_checkpoint
    from vqpipe.pipeline.score_stage import build_preprocessor

    kwargs = spec.scorer_kwargs(storage_options)
    checkpoint = kwargs.get("checkpoint")
    where = f"scorer {spec.column}: checkpoint {checkpoint}"
    if checkpoint is not None:
        try:
            probe_checkpoint(checkpoint, kwargs.get("storage_options"))
        except FileNotFoundError as exc:
            raise UserError(f"scorer {spec.column}: {exc}") from None
        except ValueError as exc:
            raise UserError(f"scorer {spec.column}: {exc}") from None
        except Exception as exc:
            raise storage_error(exc, where) from None
    try:
        preprocessor = build_preprocessor(spec, storage_options)
    except Exception as exc:
        raise UserError(
            f"scorer {spec.column}: cannot prepare its preprocessing ({type(exc).__name__}: {exc})"
        ) from None
    if spec.decode == "gpu" and not hasattr(preprocessor, "device_geometry"):
        raise UserError(
            f"scorer {spec.column}: decode=gpu: {spec.name} cannot decode on the device; use "
            "decode=cpu or auto"
        )


def check_input(config: JobConfig) -> None:
    """The input exists (for a brace pattern, its first shard; for a glob, one match) and the
    store can be read with the job's storage options."""
    from vqpipe.io.patterns import braceexpand, resolve

    spec = config.input
    if "{" in spec:
        spec = braceexpand(spec)[0]
    try:
        fs, path = resolve(spec, config.storage_options)
        exists = bool(fs.glob(path)) if any(c in path for c in "*?[") else fs.exists(path)
    except Exception as exc:
        raise storage_error(exc, f"input {config.input}") from None
    if not exists:
        raise UserError(f"input not found: {config.input}")


def check_output(config: JobConfig) -> None:
    """The output can be written — without creating it (a local output's nearest existing
    parent must be a writable directory; an object store takes a probe object, removed)."""
    try:
        fs, root = url_to_fs(config.output, config.storage_options)
    except Exception as exc:
        raise storage_error(exc, f"output {config.output}") from None
    if is_local(fs):
        path = Path(root)
        if path.exists() and not path.is_dir():
            raise UserError(f"output {config.output} exists and is not a directory")
        parent = path
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"output {config.output} is not writable ({parent} is a file)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"output {config.output} is not writable ({parent} is read-only)")
        return
    probe = f"{root.rstrip('/')}/.vqpipe-write-probe"
    try:
        fs.pipe(probe, b"ok")
        fs.rm(probe)
    except Exception as exc:
        raise storage_error(exc, f"output {config.output} (writing)") from None


def check_checkpoints(config: JobConfig) -> None:
    """Each pool's checkpoint and preprocessor (:func:`check_checkpoint`): the checks that load
    model code (torch, open_clip), so a job runs them only when it has work to do."""
    for spec in config.scorers:
        check_checkpoint(spec, spec.scorer_class(), config.storage_options)


def check_ray_address(address: str | None) -> None:
    """Refuse a Ray Client address (``ray://``, from ``--address`` or ``RAY_ADDRESS``) in one
    line: a job's driver writes the table and runs a Ray Data plan, which Ray Client cannot
    run from outside the cluster; the driver belongs on the cluster (``ray job submit``)."""
    given = address or os.environ.get("RAY_ADDRESS") or ""
    if given.startswith("ray://"):
        where = "--address" if address else "RAY_ADDRESS"
        head = given.removeprefix("ray://").split(":", 1)[0] or "HEAD"
        raise UserError(
            f"{where} {given}: Ray Client cannot run a vqpipe job; run the driver on the "
            f"cluster: ray job submit --address http://{head}:8265 --working-dir . -- "
            "vqpipe score ... (or python pipelines/score_corpus.py ...)"
        )


def validate_job(config: JobConfig, checkpoints: bool = True) -> None:
    """Every check that needs no Ray; raises :class:`UserError` for the first problem.
    ``checkpoints=False`` leaves out :func:`check_checkpoints` (the caller runs it later)."""
    check_ray_address(config.address)
    columns: dict[str, str] = {}
    written: dict[str, str] = {}  # output column → the pool writing it
    classes = []
    for spec in config.scorers:
        classes.append(check_scorer(spec, config.storage_options))
        if spec.column in columns:
            raise UserError(
                f"two scorer pools write columns {spec.column!r} ({columns[spec.column]} and "
                f"{spec.name}); give one of them column=NAME"
            )
        columns[spec.column] = spec.name
        for name in output_columns(spec.column, spec.outputs()):  # qalign_quality_score, ...
            if name in written:
                raise UserError(
                    f"scorer pools {written[name]!r} and {spec.column!r} both write {name!r}; "
                    "give one of them another column=NAME"
                )
            written[name] = spec.column
    check_cascades(config.scorers)
    limits = config.limits
    for name, value in (
        ("--max-frames", limits.max_frames),
        ("--max-bytes", limits.max_bytes),
        ("--max-pixels", limits.max_pixels),
        ("--max-duration", limits.max_duration_s),
        ("--read-timeout", limits.read_timeout_s),
        ("--decode-timeout", limits.decode_timeout_s),
        ("--video-fps", config.video_fps),
        ("--rows-per-file", config.rows_per_file),
    ):
        if value is not None and value <= 0:
            raise UserError(f"{name} must be positive (got {value})")
    check_input(config)
    check_output(config)
    if checkpoints:
        for spec, cls in zip(config.scorers, classes, strict=True):
            check_checkpoint(spec, cls, config.storage_options)


def autoscaler_can_add_nodes() -> bool:
    """Whether an autoscaler that launches nodes runs on this cluster.

    Every Ray head runs a monitor; without an autoscaling config it is "read-only" and names
    each node type after the node itself (``node_<id>``), which is how a plain ``ray start`` or
    local cluster is told apart from one with configured node types (cluster launcher,
    KubeRay's in-tree autoscaler)."""
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        if _internal_kv_get("__autoscaler_v2_enabled") == b"1":
            return True
        status = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
    except Exception:  # cannot tell: let the job wait for an autoscaler rather than refuse it
        return True
    report = status.get("autoscaler_report") or {}
    mapping = report.get("node_type_mapping") or {}
    return bool(report.get("pending_launches")) or any(
        kind != f"node_{node}" for node, kind in mapping.items()
    )


def check_cluster_resources(scorers: list[ScorerOptions], actor_cpus: dict[str, float]) -> None:
    """Each pool's actors fit on some node of the running cluster (or an autoscaler may add
    one); otherwise the job would sit at ``pending: 1 CPU, 1 GPU`` forever."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    most_gpus = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
    total_gpus = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
    most_cpus = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    problems = []
    for spec in scorers:
        need_gpu, need_cpu = spec.num_gpus, actor_cpus[spec.column]
        if need_gpu > most_gpus:
            have = "no GPUs" if total_gpus == 0 else f"at most {most_gpus:g} GPUs on a node"
            problems.append(
                f"scorer pool {spec.column!r} asks for num_gpus={need_gpu:g} per actor, but "
                f"the Ray cluster has {have}"
            )
        elif need_gpu and spec.actors[0] * need_gpu > total_gpus:
            problems.append(
                f"scorer pool {spec.column!r} needs {spec.actors[0]} actors x {need_gpu:g} GPUs "
                f"at least, but the Ray cluster has {total_gpus:g} GPUs"
            )
        if need_cpu > most_cpus:
            problems.append(
                f"scorer pool {spec.column!r} asks for num_cpus={need_cpu:g} per actor, but no "
                f"node has more than {most_cpus:g} CPUs"
            )
    if problems and not autoscaler_can_add_nodes():
        raise UserError(
            "; ".join(problems) + " and no autoscaler can add nodes (use --num-gpus-per-actor 0 "
            "to score on CPUs, or connect to a cluster with GPUs via --address / RAY_ADDRESS)"
        )
