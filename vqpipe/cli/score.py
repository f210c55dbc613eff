"""``vqpipe score``: score a corpus into a Parquet quality table, and the JobConfig of its
options (``pipelines/score_corpus.py`` builds the same)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from vqpipe.cli.options import (
    RAW,
    add_address,
    add_console_flags,
    add_json,
    add_limit,
    add_media_limits,
    add_no_resume,
    add_pool_flags,
    add_progress_every,
    add_root,
    add_rows_per_file,
    add_storage_options,
    add_video_fps,
    media_limits,
    pool_defaults,
    since,
    storage_options,
    verbosity,
)
from vqpipe.cli.runtime import shutdown_ray, sigterm_interrupts

EPILOG = """\
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


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "score",
        help="score a corpus into a Parquet quality table",
        description="Score every image and video of a corpus into a Parquet quality table "
        "(one row per input), on local Ray or a cluster.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    add_score_arguments(parser)
    add_progress_every(parser)
    add_json(parser, "print the job's summary as JSON on stdout (default: a short table)")
    add_console_flags(parser, on_subcommand=True)
    parser.set_defaults(func=_cmd_score)


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a scoring job: what :func:`job_config_from_args` reads."""
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
    add_pool_flags(
        parser,
        batch_size_help="model inputs per forward pass for pools without batch_size=; per "
        "scorer and device from vqpipe.defaults.DEFAULT_BATCH_SIZES: gamma 512 on a GPU / 64 on "
        "CPU, qalign 64 / 8 (videos 8 / 2), compare2score 16 / 4; any other scorer "
        f"(default: {DEFAULT_BATCH_SIZE})",
        num_gpus_help="GPUs per scorer actor for pools without num_gpus= (default: 0, CPU); an "
        "actor with a GPU scores on it",
        actors_help="actors per pool for pools without actors= (default: 1); MIN-MAX autoscales",
    )
    add_address(parser)
    add_video_fps(parser)
    add_media_limits(parser)
    add_root(
        parser,
        "inputs must stay inside this prefix: manifest entries (relative ones are joined "
        "to it), and a folder or glob with the files its symlinks reach (default: no "
        "restriction; relative manifest entries are relative to the manifest's folder)",
    )
    add_rows_per_file(
        parser,
        None,
        "rows per output part (default: 50,000 for a listing of files, bounded by a "
        "directory's files; 256 per part of a shard, co-sharded with it)",
    )
    add_storage_options(parser, example=True)
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
    add_limit(parser, "score the first N inputs")
    parser.add_argument(
        "--since",
        default=None,
        metavar="TIME",
        help="a prefix of files: only objects modified after TIME (ISO, UTC by default; "
        "default: all)",
    )
    add_no_resume(parser, "replace existing results", "resume, scoring only what is missing")
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


def job_config_from_args(args: argparse.Namespace) -> Any:
    """The JobConfig that ``vqpipe score`` and ``pipelines/score_corpus.py`` both build.

    The global pool flags (``--batch-size``, ``--num-gpus-per-actor``, ``--actors``) are the
    defaults of every ``--scorer``; a scorer's own keys win.
    """
    from vqpipe.pipeline.config import JobConfig, ScorerOptions

    defaults = pool_defaults(args)
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
        storage_options=storage_options(args.storage_options),
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
        since=since(args.since),
        calibration=_calibration(args, specs),
        retry_errors=args.retry_errors,
    )


def _calibration(args: argparse.Namespace, specs: list[Any]) -> dict[str, Any] | None:
    """``--calibration``: the JSON, checked against the job's score columns (before Ray)."""
    if not getattr(args, "calibration", None):
        return None
    from vqpipe.rewards.calibrate import check_columns, load_calibration
    from vqpipe.schema import extra_column

    record = load_calibration(args.calibration, storage_options(args.storage_options))
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

    level = verbosity(args)
    config = job_config_from_args(args)
    try:
        with (
            sigterm_interrupts(),
            StatusLine(terminal(), level, every_s=args.progress_every) as status,
        ):
            status.update("starting: checks, inputs, Ray, the first part")
            with ray_output_kept_out(level, "score"):
                try:
                    summary = run_job(
                        config,
                        progress=status.progress,
                        # in place on a terminal: often; in a log: every --progress-every seconds
                        progress_every_s=1.0 if status.tty else args.progress_every,
                        notice=status.notice,
                    )
                finally:
                    shutdown_ray()  # inside: Ray's shutdown messages go to the log too
            if not summary["scored_rows"]:
                if "shards" in summary:
                    done = (
                        f"{summary['shards_already_done']} of {summary['shards']} shards committed"
                    )
                else:
                    done = f"{summary.get('already_done', 0)} inputs already scored"
                status.update(f"nothing left to score: {done}", force=True)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see sigterm_interrupts)
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
