"""The ``vqpipe`` command line."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from vqpipe.commands import COMMANDS
from vqpipe.commands._common import add_media_limits, add_mos_root, media_limits
from vqpipe.errors import (
    JobError,
    UserError,
    clear_interrupts,
    note_interrupt,
)


def _verbosity(args: argparse.Namespace) -> int:
    from vqpipe.console import NORMAL, QUIET, VERBOSE

    if getattr(args, "quiet", False) and getattr(args, "verbose", False):
        raise UserError("--quiet and --verbose exclude each other")
    if getattr(args, "quiet", False):
        return QUIET
    return VERBOSE if getattr(args, "verbose", False) else NORMAL


def _cmd_demo(args: argparse.Namespace) -> int:
    from vqpipe.console import StatusLine, ray_output_kept_out, terminal
    from vqpipe.demo import format_summary, run_demo

    verbosity = _verbosity(args)
    with StatusLine(terminal(), verbosity) as status:
        status.update("generating the corpus and scoring it on local Ray")
        with ray_output_kept_out(verbosity, "demo"):
            summary = run_demo(
                args.out,
                n_contents=args.contents,
                seed=args.seed,
                num_cpus=args.num_cpus,
                checkpoint=args.checkpoint,
            )
        status.update("demo corpus generated, scored and evaluated")
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _storage_options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--storage-options is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def _since(text: str | None) -> float | None:
    """``--since``: an ISO date or time (UTC unless it says otherwise), or POSIX seconds."""
    if not text:
        return None
    import datetime as dt

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"--since {text!r}: use an ISO date or time (2026-12-01, 2026-12-01T02:00Z)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


def job_config_from_args(args: argparse.Namespace) -> Any:
    """The JobConfig that ``vqpipe score`` and ``pipelines/score_corpus.py`` both build.

    The global pool flags (``--batch-size``, ``--num-gpus-per-actor``, ``--actors``) are the
    defaults of every ``--scorer``; a scorer's own keys win.
    """
    from vqpipe.pipeline.config import JobConfig, ScorerOptions, parse_actors

    defaults = {
        "batch_size": args.batch_size,
        "num_gpus": args.num_gpus_per_actor,
        "actors": parse_actors(args.actors) if args.actors else None,
    }
    texts = list(args.scorer or [])
    named = {t.partition(":")[0].strip() for t in texts}
    texts += [n.strip() for n in (args.scorers or "").split(",") if n.strip() not in named | {""}]
    specs = [ScorerOptions.parse(text, **defaults) for text in texts or ["gamma"]]
    return JobConfig(
        input=args.input,
        output=args.out,
        scorers=specs,
        include=tuple(args.include or ()),
        exclude=tuple(args.exclude or ()),
        storage_options=_storage_options(args.storage_options),
        video_fps=args.video_fps,
        limits=media_limits(args),
        rows_per_file=args.rows_per_file,
        limit=args.limit,
        resume=not args.no_resume,
        root=args.root,
        address=args.address,
        input_format=args.input_format,
        uri_column=args.uri_column,
        media_column=args.media_column,
        key_column=args.key_column,
        since=_since(args.since),
        calibration=_calibration(args, specs),
        retry_errors=args.retry_errors,
    )


def _calibration(args: argparse.Namespace, specs: list[Any]) -> dict[str, Any] | None:
    """``--calibration``: the JSON, checked against the job's score columns (before Ray)."""
    if not getattr(args, "calibration", None):
        return None
    from vqpipe.rewards.calibrate import check_columns, load_calibration
    from vqpipe.schema import extra_column

    record = load_calibration(args.calibration, _storage_options(args.storage_options))
    scores = [extra_column(s.column, key) for s in specs for key in _score_outputs(s)]
    check_columns(record, scores, "this job's scorers write")
    return record


def _score_outputs(spec: Any) -> list[str]:
    """A pool's score outputs: ``score``, or per task ``<task>_score`` (Q-Align ``tasks=``).
    A pool whose scorer or options are wrong counts as ``score``: the job's checks, which
    run next, say what is wrong with it."""
    try:
        outputs = spec.outputs()
    except Exception:
        return ["score"]
    return [key for key in outputs if key == "score" or key.endswith("_score")]


def _cmd_score(args: argparse.Namespace) -> int:
    from vqpipe.console import StatusLine, ray_output_kept_out, terminal
    from vqpipe.pipeline.job import run_job

    verbosity = _verbosity(args)
    config = job_config_from_args(args)
    try:
        with (
            _sigterm_interrupts(),
            StatusLine(terminal(), verbosity, every_s=args.progress_every) as status,
        ):
            status.update("starting: checks, inputs, Ray, the first part")
            with ray_output_kept_out(verbosity, "score"):
                try:
                    summary = run_job(
                        config,
                        progress=status.progress,
                        # in place on a terminal: often; in a log: every --progress-every seconds
                        progress_every_s=1.0 if status.tty else args.progress_every,
                        notice=status.notice,
                    )
                finally:
                    _shutdown_ray()  # inside: Ray's shutdown messages go to the log too
            if not summary["scored_rows"]:
                if "shards" in summary:
                    done = (
                        f"{summary['shards_already_done']} of {summary['shards']} shards committed"
                    )
                else:
                    done = f"{summary.get('already_done', 0)} inputs already scored"
                status.update(f"nothing left to score: {done}", force=True)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see _sigterm_interrupts)
        from vqpipe.pipeline.runner import committed_parts

        print(
            f"vqpipe: interrupted: {committed_parts(config)} parts committed; rerun the same "
            "command to resume",
            file=sys.stderr,
            flush=True,
        )
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from vqpipe.console import summary_table

        print(summary_table(summary, config.output))
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM and Ctrl-C raise :class:`Interrupted` in the main thread while the block runs,
    and are recorded, so the job's loop stops at its next step even if a library caught the
    first exception (the job keeps the SIGTERM handler over ``ray.init``'s own, see
    ``vqpipe.pipeline.job``)."""

    stdout = sys.stdout

    def handler(signum: int, frame: Any) -> None:
        if not isinstance(sys.stdout, _MainThreadOnly):
            sys.stdout = _MainThreadOnly(sys.stdout)
        note_interrupt(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear_interrupts()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        clear_interrupts()
        if isinstance(sys.stdout, _MainThreadOnly):
            sys.stdout = stdout


class _MainThreadOnly:
    """``sys.stdout`` once the job is interrupted: what other threads print goes to
    ``sys.stderr`` (Ray's log file unless ``--verbose``). Ray's driver prints the raylet's
    messages about the workers the Ctrl-C killed (``(raylet) … killed``) to stdout from a
    thread of its own, whatever ``log_to_driver`` says; they are Ray's own output."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return self._stream.write(text)
        return sys.stderr.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _shutdown_ray() -> None:
    """Stop the local Ray this command started (a Ray the caller started stays up)."""
    from vqpipe.pipeline import runner

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and runner.STARTED_RAY:
        ray.shutdown()
        runner.STARTED_RAY = False


def _cmd_filter(args: argparse.Namespace) -> int:
    from vqpipe.pipeline.filtering import filter_table

    result = filter_table(
        args.table,
        args.out,
        where=args.where,
        percentile=args.percentile,
        storage_options=_storage_options(args.storage_options),
        normalize=args.normalize,
        group=args.group,
    )
    threshold = (
        f", {args.percentile} threshold {result['threshold']:.4g}" if args.percentile else ""
    )
    failed = f", {result['failed']} failed rows left out" if result["failed"] else ""
    print(f"kept {result['kept']} of {result['rows']} rows{failed}{threshold} → {result['out']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from vqpipe.eval.inputs import check_report_dir, read_input
    from vqpipe.eval.report import format_value, write_report
    from vqpipe.rewards.fuse import fuse_record

    storage = _storage_options(args.storage_options)
    check_report_dir(args.out)
    pred = read_input(args.predictions, "the quality table", storage)
    mos = read_input(args.mos, "--mos", storage)
    try:
        record = write_report(
            pred,
            mos,
            args.out,
            by=args.by or "dataset",
            bootstrap=args.bootstrap,
            mos_root=args.mos_root,
            fused=fuse_record(args.predictions, storage),
        )
    except ValueError as exc:  # a missing column, no match: one line, not a traceback
        raise UserError(f"eval: {exc}") from None
    for warning in record["warnings"]:
        print(f"vqpipe eval: warning: {warning}", file=sys.stderr)
    for row in record["metrics"]:
        flag = f"  ⚠ {row['note']}" if row["note"] else ""  # n < 10, undefined, fit fallback
        print(
            f"{row['scorer']:<16}{row['group']:<20}n={row['n']:<6}"
            f"SRCC {format_value(row['srcc'])}  KRCC {format_value(row['krcc'])}  "
            f"PLCC {format_value(row['plcc'])}{flag}"
        )
    join = record["join"]
    print(
        f"matched {join['matched']}, {join['missing_predictions']} MOS rows without prediction, "
        f"{join['without_mos']} predictions without MOS → {args.out}/report.md"
    )
    rules = record["matched_by"] or {}
    by = ", ".join(f"{n} by {rule}" for rule, n in rules.items() if n)
    ambiguous = record["ambiguous_basenames"]
    if by and (join["missing_predictions"] or ambiguous or rules.get("uri") != join["matched"]):
        extra = f"; {ambiguous} MOS keys with a file name held by several rows" * bool(ambiguous)
        print(f"matched {by}{extra}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from vqpipe.bench import run_benchmarks, write_bench

    report = run_benchmarks(args.dir, quick=args.quick, only=args.only, progress=sys.stderr)
    _, markdown = write_bench(report, args.out)
    print(markdown.read_text())
    return 1 if any("error" in b for b in report["benchmarks"]) else 0


def _cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from vqpipe.console import StatusLine, ray_output_kept_out, terminal
    from vqpipe.train.config import check_config, setting
    from vqpipe.train.progress import epoch_line
    from vqpipe.train.trainer import fit

    try:
        with open(args.config, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())  # YAML errors span lines: keep the message one line
        raise UserError(f"cannot read the training config {args.config}: {reason}") from None
    verbosity = _verbosity(args)
    check_config(args.method, config)  # a bad config: one line, before Ray starts
    epochs = setting(config, args.method, "epochs")
    started_ray = False
    try:
        with _sigterm_interrupts(), StatusLine(terminal(), verbosity) as status:
            status.update(f"training {args.method} with Ray Train")

            def progress(metrics: dict[str, Any]) -> None:
                status.notice(epoch_line(metrics, epochs))
                status.update(f"training {args.method}: epoch {int(metrics['epoch']) + 1} done")

            with ray_output_kept_out(verbosity, "train"):
                started_ray = _start_train_ray(verbosity)
                result = _train_failure_in_one_line(
                    lambda: fit(
                        args.method,
                        config,
                        num_workers=args.num_workers,
                        use_gpu=args.use_gpu,
                        cpus_per_worker=args.cpus_per_worker,
                        storage_path=args.storage_path,
                        name=args.name,
                        resume=not args.no_resume,
                        progress=progress,
                        notice=status.notice,
                    )
                )
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see _sigterm_interrupts)
        if started_ray:
            with contextlib.suppress(Exception):  # the run's workers go with this Ray
                sys.modules["ray"].shutdown()
        print(
            f"vqpipe: interrupted: training stopped; rerun the same command to resume from "
            f"the last checkpoint of --name {args.name}",
            file=sys.stderr,
            flush=True,
        )
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    if result.error is not None:
        print(f"training failed: {result.error}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
                "metrics": result.metrics,
            },
            indent=2,
            default=str,
        )
    )
    return 0


def _start_train_ray(verbosity: int) -> bool:
    """Start a Ray for ``train`` (RAY_ADDRESS's cluster, else local) on the main thread unless
    one is up, keeping our SIGTERM handler over ``ray.init``'s; True when this started it."""
    import ray

    from vqpipe.console import VERBOSE

    if ray.is_initialized():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    ray.init(include_dashboard=False, log_to_driver=verbosity >= VERBOSE)
    if threading.current_thread() is threading.main_thread() and previous is not None:
        signal.signal(signal.SIGTERM, previous)
    return True


def _train_failure_in_one_line(call: Callable[[], Any]) -> Any:
    """:func:`_off_main_thread`, a failed run (an error in a training worker) raised as a
    :class:`JobError` whose line is the worker's exception (the full traceback stays in Ray's
    output, whose file is named)."""
    import ray.train

    try:
        return _off_main_thread(call)
    except ray.train.TrainingFailedError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise JobError(f"training failed: {lines[-1] if lines else type(exc).__name__}") from exc


def _off_main_thread(call: Callable[[], Any]) -> Any:
    """``call()`` on a thread of its own while this one waits. Ray Train's ``fit()`` on the
    main thread replaces the Ctrl-C handler with one that aborts the run and returns as if it
    had ended (exit 1, no word of the interrupt); off it, Ctrl-C and SIGTERM reach ours."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # re-raised on the calling thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="vqpipe-train", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # short waits: a signal handler runs between them
    if "error" in box:
        raise box["error"]
    return box["result"]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    # METHODS: a dict in a module that imports torch only inside its functions (--help stays
    # torch-free; tests/test_cli.py checks it)
    from vqpipe.train.trainer import METHODS

    parser.add_argument(
        "--method", required=True, choices=sorted(METHODS), help="the method to fine-tune"
    )
    parser.add_argument(
        "--config",
        required=True,
        help="YAML of the config keys (examples: configs/<method>.yaml; every key and "
        "default: docs/training.md)",
    )
    parser.add_argument(
        "--num-workers", type=int, default=1, help="Ray Train workers (default: %(default)s)"
    )
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    parser.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default: %(default)s)"
    )
    parser.add_argument(
        "--storage-path",
        default=None,
        help="run storage, local or a URI (default: ~/vqpipe-runs)",
    )
    parser.add_argument(
        "--name", default="vqpipe-train", help="run name, the resume key (default: %(default)s)"
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start over (default: resume from the newest checkpoint of --name)",
    )


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    from vqpipe.defaults import DEFAULT_BATCH_SIZE
    from vqpipe.pipeline.config import POOL_KEYS

    parser.add_argument(
        "input",
        help="a local or fsspec path: a directory, a file, a glob or a brace pattern "
        "(shard-{00000..00099}.tar) of media files, WebDataset shards, Parquet files with "
        "media bytes or manifests",
    )
    parser.add_argument("--out", required=True, help="output dir or URI for the quality table")
    parser.add_argument(
        "--input-format",
        choices=("auto", "files", "manifest", "webdataset", "parquet"),
        default="auto",
        help="what the input holds (default: auto — .tar shards: webdataset; Parquet with a "
        "media-bytes column and no uri column: parquet; tables with a uri column: manifest; "
        "else files)",
    )
    parser.add_argument(
        "--uri-column", default="uri", help="manifests: the URI column (default: uri)"
    )
    parser.add_argument(
        "--media-column",
        default=None,
        help="Parquet with media bytes: the column (default: found by type and name)",
    )
    parser.add_argument(
        "--key-column",
        default=None,
        help="Parquet with media bytes: each row's key (default: a 'key' column, else the row "
        "index)",
    )
    pool_keys = ", ".join(POOL_KEYS)
    parser.add_argument(
        "--scorer",
        action="append",
        metavar="NAME[:KEY=VALUE,...]",
        help="a scorer pool, repeatable (default: gamma with its bundled demo checkpoint), e.g. "
        "gamma:checkpoint=s3://m/g.safetensors,batch_size=256; pool keys: "
        f"{pool_keys}; other keys go to the scorer (`vqpipe scorers NAME` lists them)",
    )
    parser.add_argument(
        "--scorers",
        metavar="NAME,...",
        help="comma-separated scorer names with default options (default: none; with neither "
        "this nor --scorer: gamma)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="model inputs per forward pass for pools without batch_size=; per scorer and "
        "device from vqpipe.defaults.DEFAULT_BATCH_SIZES: gamma 512 on a GPU / 64 on CPU, qalign "
        "64 / 8 (videos 8 / 2), compare2score 16 / 4; any other scorer "
        f"(default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--num-gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per scorer actor for pools without num_gpus= (default: 0, CPU); an actor "
        "with a GPU scores on it",
    )
    parser.add_argument(
        "--actors",
        metavar="N|MIN-MAX",
        help="actors per pool for pools without actors= (default: 1); MIN-MAX autoscales",
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster to use (default: RAY_ADDRESS, else local)"
    )
    parser.add_argument(
        "--video-fps", type=float, default=1.0, help="frames sampled per second (default: 1)"
    )
    add_media_limits(parser)
    parser.add_argument(
        "--root",
        default=None,
        help="inputs must stay inside this prefix: manifest entries (relative ones are joined "
        "to it), and a folder or glob with the files its symlinks reach (default: no "
        "restriction; relative manifest entries are relative to the manifest's folder)",
    )
    parser.add_argument(
        "--rows-per-file",
        type=int,
        default=None,
        help="rows per output part (default: 50,000 for a listing of files, bounded by a "
        "directory's files; 256 per part of a shard, co-sharded with it)",
    )
    parser.add_argument(
        "--storage-options",
        help='JSON for fsspec, e.g. \'{"profile": "curation"}\' (default: none)',
    )
    parser.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="glob on relative paths (a manifest's entries: relative to --root, else to the "
        "manifest's folder), repeatable (default: every input)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="glob on relative paths, repeatable; without '/' it matches any one name in the "
        "path, e.g. '.*' or '_DSC*' (default: none; only the job's own files are skipped)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="score the first N inputs only (default: all)"
    )
    parser.add_argument(
        "--since",
        default=None,
        metavar="TIME",
        help="a prefix of files: only objects modified after TIME (ISO, UTC by default; "
        "default: all)",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="replace existing results (default: resume, scoring only what is missing)",
    )
    parser.add_argument(
        "--calibration",
        metavar="CALIB.json",
        help="add <column>_calibrated for the columns this file of vqpipe calibrate maps "
        "(default: none)",
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="resume: score every error row again (default: only transient ones — store "
        "outages, throttling, timeouts)",
    )


def _cmd_scorers(args: argparse.Namespace) -> int:
    from vqpipe.catalog import format_scorer, format_table

    print(format_scorer(args.name) if args.name else format_table())
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    import vqpipe

    print(vqpipe.__version__)
    return 0


def _add_console_flags(parser: argparse.ArgumentParser, on_subcommand: bool) -> None:
    # On a subcommand the flags default to SUPPRESS, so that `vqpipe --quiet score` is not
    # undone by the subcommand's own default.
    default = argparse.SUPPRESS if on_subcommand else False
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no status line or notices, only errors and the result (default: off)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show Ray's own logs and progress on the terminal (default: off: they go to Ray's "
        "log directory, /tmp/ray/session_latest/logs)",
    )


_RAW = argparse.RawDescriptionHelpFormatter

MAIN_EPILOG = """\
examples:
  vqpipe demo                                    # synthetic corpus, scored and evaluated
  vqpipe score ./images --out ./quality          # Gamma (bundled demo checkpoint), local Ray
  vqpipe filter ./quality --where "gamma_score >= 0.6" --out keep.parquet
  vqpipe eval ./quality --mos mos.csv --out report/
  vqpipe pairs ./quality --group prompt_id --score gamma_score --out pairs/
  vqpipe compare pairs.parquet --scorer compare2score --out compared/
  vqpipe calibrate ./quality --mos mos.csv --out calib.json
  vqpipe fuse ./quality --calibration calib.json --out fused/
  vqpipe scorers                                 # what can score, and with which options
  vqpipe scorers gamma                           # one scorer's --scorer keys

`vqpipe COMMAND --help` shows each command's options and examples.
"""

DEMO_EPILOG = """\
examples:
  vqpipe demo                                    # 8 contents x 26 images, into ./vqpipe-demo
  vqpipe demo --contents 2 --num-cpus 2 --out /tmp/demo
  vqpipe demo --checkpoint gamma.safetensors --json
"""

SCORE_EPILOG = """\
examples:
  vqpipe score ./images --out ./quality
  vqpipe score s3://lake/images/ --out s3://lake/quality/ \\
      --scorer gamma:checkpoint=s3://models/gamma.safetensors,batch_size=256 \\
      --num-gpus-per-actor 1 --actors 1-8 --storage-options '{"profile": "curation"}'
  vqpipe score ./images --out ./quality \\
      --scorer qalign:task=quality,column=qalign_quality \\
      --scorer qalign:task=aesthetics,column=qalign_aes
  vqpipe score manifest.parquet --out ./quality --include "**/*.jpg"
  RAY_ADDRESS=auto vqpipe score ./images --out ./quality   # on a node of a running cluster

Rerunning the same command resumes: only inputs without a row are scored. Ray's own logs go
to Ray's log directory (/tmp/ray/session_latest/logs); --verbose shows them here.
"""

FILTER_EPILOG = """\
examples:
  vqpipe filter ./quality --where "gamma_score >= 0.6" --out keep.parquet
  vqpipe filter ./quality --percentile gamma_score:80 --out ./lists/      # → ./lists/keep.parquet
  vqpipe filter ./quality --where "media_type == 'image' and width >= 512" --out keep.parquet
  vqpipe filter ./quality --normalize group-zscore --group prompt_id \
      --where "gamma_normalized > 1" --out keep.parquet     # per-prompt reward normalisation
  vqpipe filter s3://lake/quality/ --where "qalign_score > 3.5 or gamma_score.isna()" \\
      --out s3://lake/keep.parquet --storage-options '{"profile": "curation"}'

The keep list has every column of the table and its `vqpipe.job` metadata (plus
`vqpipe.filter`: source, --where, --percentile and threshold). Rows with an error are left
out; a condition on a NULL is not true, so NULL scores are never kept (`COL.isna()` selects
them explicitly).
"""

EVAL_EPILOG = """\
examples:
  vqpipe eval ./quality --mos mos.csv --out report/
  vqpipe eval ./quality --mos mos.parquet --out report/ --by dataset --by media_type
  vqpipe eval preds.parquet --mos s3://lake/mos.csv --out report/ --bootstrap 1000 \\
      --storage-options '{"anon": true}'
"""

TRAIN_EPILOG = """\
examples:
  vqpipe train --method gamma --config gamma.yaml
  vqpipe train --method qalign --config qalign.yaml --num-workers 4 --use-gpu \\
      --storage-path s3://runs/ --name qalign-koniq
"""

BENCH_EPILOG = """\
examples:
  vqpipe bench --quick                           # every script of benchmarks/, small settings
  vqpipe bench --only small_job --only pipeline --out bench/
"""

SCORERS_EPILOG = """\
examples:
  vqpipe scorers                                 # one row per scorer
  vqpipe scorers gamma                           # gamma's --scorer keys and their defaults
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vqpipe",
        description="Score the visual quality of image and video corpora on Ray.",
        epilog=MAIN_EPILOG,
        formatter_class=_RAW,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks (also VQPIPE_DEBUG=1)"
    )
    parser.add_argument("--version", action="version", version=f"vqpipe {_version()}")
    _add_console_flags(parser, on_subcommand=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="generate a synthetic corpus and score it with Gamma on local Ray",
        description="Generate a synthetic corpus, score it with Gamma on local Ray Data and "
        "evaluate the scores against its MOS.",
        epilog=DEMO_EPILOG,
        formatter_class=_RAW,
    )
    demo.add_argument(
        "--out", default="vqpipe-demo", help="output directory (default: %(default)s)"
    )
    demo.add_argument(
        "--contents",
        type=int,
        default=8,
        help="synthetic contents, 26 images each (default: %(default)s)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=2026,
        help="corpus seed (default: %(default)s, unseen in training)",
    )
    demo.add_argument(
        "--checkpoint", default=None, help="Gamma checkpoint (default: the bundled demo one)"
    )
    demo.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs for local Ray (default: all)"
    )
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_console_flags(demo, on_subcommand=True)
    demo.set_defaults(func=_cmd_demo)

    score = sub.add_parser(
        "score",
        help="score a corpus into a Parquet quality table",
        description="Score every image and video of a corpus into a Parquet quality table "
        "(one row per input), on local Ray or a cluster.",
        epilog=SCORE_EPILOG,
        formatter_class=_RAW,
    )
    add_score_arguments(score)
    score.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="status line interval when stderr is not a terminal (default: %(default)g; on a "
        "terminal the line updates in place)",
    )
    score.add_argument(
        "--json",
        action="store_true",
        help="print the job's summary as JSON on stdout (default: a short table)",
    )
    _add_console_flags(score, on_subcommand=True)
    score.set_defaults(func=_cmd_score)

    filt = sub.add_parser(
        "filter",
        help="write the keep list of a quality table",
        description="Write the rows of a quality table that pass --where and --percentile to "
        "one Parquet file, with every column and the table's metadata.",
        epilog=FILTER_EPILOG,
        formatter_class=_RAW,
    )
    filt.add_argument(
        "table", help="a quality table: the --out of vqpipe score (dir or URI), or a Parquet file"
    )
    filt.add_argument(
        "--where",
        metavar="EXPR",
        help='condition in pandas-query syntax, e.g. "gamma_score >= 0.6 and width > 512"; '
        "and/or/not, comparisons, in [...], + - * /, COL.isna(), COL.notna() (default: all "
        "rows without an error)",
    )
    filt.add_argument(
        "--percentile",
        metavar="COLUMN:P",
        help="keep rows at or above the P-th percentile of COLUMN, among the rows --where keeps "
        "(default: no percentile cut)",
    )
    filt.add_argument(
        "--out",
        required=True,
        help="output Parquet file; an existing directory or a trailing '/' writes "
        "DIR/keep.parquet (no default)",
    )
    filt.add_argument(
        "--normalize",
        choices=("group-zscore", "group-rank"),
        default=None,
        help="add <scorer>_normalized for every <scorer>_score, per --group: z-score or rank "
        "in [0, 1] (before --where / --percentile, which may use it; default: none)",
    )
    filt.add_argument(
        "--group", metavar="COLUMN", help="the group column of --normalize (default: none)"
    )
    filt.add_argument("--storage-options", help="JSON storage options for fsspec (default: none)")
    filt.set_defaults(func=_cmd_filter)

    ev = sub.add_parser(
        "eval",
        help="SRCC/KRCC/PLCC of a quality table against MOS + report",
        description="Correlate a quality table with MOS: SRCC, KRCC, PLCC (after a monotone "
        "logistic fit) with bootstrap intervals, per group, with plots and report.md.",
        epilog=EVAL_EPILOG,
        formatter_class=_RAW,
    )
    ev.add_argument("predictions", help="quality table: a job's output dir or a Parquet/CSV file")
    ev.add_argument(
        "--mos", required=True, help="MOS table (uri or path) with uri, mos[, dataset] columns"
    )
    ev.add_argument("--out", required=True, help="report directory")
    add_mos_root(ev)
    ev.add_argument(
        "--by",
        action="append",
        metavar="COLUMN",
        help="group by a column of the MOS or quality table; repeat or comma-separate for "
        "several (default: dataset)",
    )
    ev.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        help="resamples for 95%% intervals (default: %(default)s)",
    )
    ev.add_argument("--storage-options", help="JSON storage options for fsspec (default: none)")
    ev.set_defaults(func=_cmd_eval)

    train = sub.add_parser(
        "train",
        help="fine-tune a method with Ray Train (TorchTrainer)",
        description="Fine-tune a method on MOS datasets with Ray Train; checkpoints load as "
        "the scorer's checkpoint=.",
        epilog=TRAIN_EPILOG,
        formatter_class=_RAW,
    )
    add_train_arguments(train)
    _add_console_flags(train, on_subcommand=True)
    train.set_defaults(func=_cmd_train)

    bench = sub.add_parser(
        "bench",
        help="run benchmarks/ and write bench.json + bench.md",
        description="Run the scripts of benchmarks/ one after another and collect their "
        "figures into bench.json and a markdown table.",
        epilog=BENCH_EPILOG,
        formatter_class=_RAW,
    )
    bench.add_argument(
        "--quick", action="store_true", help="the scripts' small settings (default: full size)"
    )
    bench.add_argument(
        "--only",
        action="append",
        metavar="SCRIPT",
        help="script name without .py, repeatable (default: every script)",
    )
    bench.add_argument("--dir", default=None, help="benchmarks directory (default: ./benchmarks)")
    bench.add_argument("--out", default="bench", help="output directory (default: %(default)s)")
    bench.set_defaults(func=_cmd_bench)

    scorers = sub.add_parser(
        "scorers",
        help="list the registered scorers, or one scorer's options",
        description="List the registered scorers (name, media, score range, default "
        "checkpoint), or the --scorer keys of one with their defaults.",
        epilog=SCORERS_EPILOG,
        formatter_class=_RAW,
    )
    scorers.add_argument(
        "name", nargs="?", default=None, help="a scorer: list its options (default: list all)"
    )
    scorers.set_defaults(func=_cmd_scorers)

    for name in COMMANDS:
        importlib.import_module(f"vqpipe.commands.{name}").add_parser(sub)

    version = sub.add_parser(
        "version",
        help="print the vqpipe version",
        description="Print the vqpipe version (also vqpipe --version).",
        epilog="examples:\n  vqpipe version\n",
        formatter_class=_RAW,
    )
    version.set_defaults(func=_cmd_version)
    return parser


def _version() -> str:
    from vqpipe import __version__

    return __version__


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line (``vqpipe: error: …``), like every other user error, with a
    "did you mean" for a misspelled subcommand, choice or option."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        if message.startswith("the following arguments are required"):
            # argparse checks required options before it reports unknown ones: `--ouput x`
            # would read as "--out is required", so the misspelling is named first.
            unknown = self._unknown_options(self._seen)
            if unknown:
                message = self._unrecognized(unknown)
        where = self.prog.removeprefix("vqpipe").strip()
        raise UserError(f"{where + ': ' if where else ''}{message} (see {self.prog} --help)")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._seen = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(self._seen, namespace)
        if extras and not self._has_subcommands():
            # a subcommand reports its own unknown options (the top-level parser only knows
            # that *some* argument was not recognized, not of which command)
            self.error(self._unrecognized(extras))
        return namespace, extras

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            hint = _did_you_mean(str(value), choices, quote=True)
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{hint} (choose from {', '.join(choices)})"
            )

    def _has_subcommands(self) -> bool:
        return any(isinstance(a, argparse._SubParsersAction) for a in self._actions)

    def _unknown_options(self, args: Sequence[str]) -> list[str]:
        """The option-like words of ``args`` that name none of this parser's options."""
        known = self._option_string_actions
        unknown = []
        for word in args:
            if word == "--":
                break
            if not word.startswith("-") or word == "-" or self._negative_number_matcher.match(word):
                continue
            name = word.split("=", 1)[0]
            if name in known or (not name.startswith("--") and name[:2] in known):
                continue  # an option, or short flags run together (-qv) / -xVALUE
            if name.startswith("--") and [o for o in known if o.startswith(name)]:
                continue  # an abbreviation argparse resolves (or reports as ambiguous)
            unknown.append(name)
        return unknown

    def _unrecognized(self, extras: Sequence[str]) -> str:
        options = [o for o in self._option_string_actions if o.startswith("--")]
        names = [w.split("=", 1)[0] for w in extras if w.startswith("-")] or list(extras)
        hints = "".join(_did_you_mean(n, options) for n in names if n.startswith("-"))
        return f"unrecognized arguments: {' '.join(names)}{hints}"


def _did_you_mean(word: str, candidates: Sequence[str], quote: bool = False) -> str:
    """``"; did you mean X?"`` for the closest of ``candidates`` (difflib), else ``""``."""
    bare = {c.lstrip("-"): c for c in candidates}  # "--" alone would make --bogus ~ --out
    close = difflib.get_close_matches(word.lstrip("-"), list(bare), n=1, cutoff=0.6)
    if not close:
        return ""
    best = bare[close[0]]
    return f"; did you mean {best!r}?" if quote else f"; did you mean {best}?"


def _debug(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("VQPIPE_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error prints one line and returns 2 (``--debug`` or
    ``VQPIPE_DEBUG=1`` show the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
        with _sigterm_interrupts():
            return args.func(args)
    except KeyboardInterrupt as exc:  # a command that does not say more about it (score does)
        if debug:
            traceback.print_exc()
        print("vqpipe: interrupted", file=sys.stderr, flush=True)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except UserError as exc:
        if debug:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"vqpipe: error: {message}", file=sys.stderr)
        return 2
    except JobError as exc:
        if debug:
            traceback.print_exc()
        print(f"vqpipe: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
