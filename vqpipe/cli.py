"""The ``vqpipe`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _cmd_demo(args: argparse.Namespace) -> int:
    from vqpipe.demo import format_summary, run_demo

    summary = run_demo(
        args.out,
        n_contents=args.contents,
        seed=args.seed,
        num_cpus=args.num_cpus,
        checkpoint=args.checkpoint,
    )
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def job_config_from_args(args: argparse.Namespace) -> Any:
    """The JobConfig that ``vqpipe score`` and ``pipelines/score_corpus.py`` both build."""
    from vqpipe.media.decode import MediaLimits
    from vqpipe.pipeline.config import JobConfig, ScorerOptions

    specs = [ScorerOptions.parse(text) for text in args.scorer or []]
    named = {s.name for s in specs}
    for name in filter(None, (args.scorers or "").split(",")):
        if name not in named:
            specs.append(ScorerOptions(name.strip()))
    if not specs:
        specs = [ScorerOptions("gamma")]
    for spec in specs:
        if args.batch_size:
            spec.batch_size = args.batch_size
        if args.num_gpus_per_actor is not None:
            spec.num_gpus = args.num_gpus_per_actor
        if args.actors:
            low, _, high = args.actors.partition(",")
            spec.actors = (int(low), int(high or low))
        if args.num_gpus_per_actor == 0 or not _has_gpu():
            spec.options.setdefault("device", "cpu")
    storage = json.loads(args.storage_options) if args.storage_options else {}
    return JobConfig(
        input=args.input,
        output=args.out,
        scorers=specs,
        include=tuple(args.include or ()),
        exclude=tuple(args.exclude or ()),
        storage_options=storage,
        video_fps=args.video_fps,
        limits=MediaLimits(
            max_frames=args.max_frames,
            max_bytes=args.max_bytes,
            max_pixels=args.max_pixels,
            max_duration_s=args.max_duration,
        ),
        rows_per_file=args.rows_per_file,
        limit=args.limit,
        resume=not args.no_resume,
        root=args.root,
    )


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _cmd_score(args: argparse.Namespace) -> int:
    from vqpipe.pipeline.job import format_progress, run_job

    def report(progress: dict[str, Any]) -> None:
        print(format_progress(progress), file=sys.stderr, flush=True)

    summary = run_job(job_config_from_args(args), progress=report)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_filter(args: argparse.Namespace) -> int:
    import pandas as pd

    from vqpipe.pipeline.job import read_quality_table

    storage = json.loads(args.storage_options) if args.storage_options else {}
    table = read_quality_table(args.table, storage)
    keep = table[table["error"].isna()] if "error" in table else table
    if args.where:
        keep = keep.query(args.where)
    if args.percentile:
        column, _, value = args.percentile.partition(":")
        threshold = keep[column].quantile(float(value) / 100.0)
        keep = keep[keep[column] >= threshold]
    keep = keep.drop(columns=[c for c in keep.columns if c.endswith("_probs")])
    out = pd.DataFrame(keep).reset_index(drop=True)
    out.to_parquet(args.out, storage_options=storage or None)
    print(f"kept {len(out)} of {len(table)} rows → {args.out}")
    return 0


def read_table(path: str, storage: dict[str, Any] | None = None) -> Any:
    """A quality-table directory (a job's output) or one Parquet / CSV / JSONL file."""
    import pandas as pd

    from vqpipe.pipeline.job import read_quality_table

    lower = path.lower().rstrip("/")
    if lower.endswith(".csv"):
        return pd.read_csv(path, storage_options=storage or None)
    if lower.endswith((".jsonl", ".json")):
        return pd.read_json(path, lines=lower.endswith(".jsonl"), storage_options=storage or None)
    if lower.endswith(".parquet"):
        return pd.read_parquet(path, storage_options=storage or None)
    return read_quality_table(path, storage)


def _cmd_eval(args: argparse.Namespace) -> int:
    from vqpipe.eval.report import write_report

    storage = json.loads(args.storage_options) if args.storage_options else {}
    pred, mos = read_table(args.predictions, storage), read_table(args.mos, storage)
    record = write_report(pred, mos, args.out, by=args.by, bootstrap=args.bootstrap)
    for row in record["metrics"]:
        print(
            f"{row['scorer']:<16}{row['group']:<20}n={row['n']:<6}SRCC {row['srcc']:.4f}  "
            f"KRCC {row['krcc']:.4f}  PLCC {row['plcc']:.4f}"
        )
    join = record["join"]
    print(
        f"matched {join['matched']}, {join['missing_predictions']} MOS rows without prediction, "
        f"{join['without_mos']} predictions without MOS → {args.out}/report.md"
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from vqpipe.bench import run_benchmarks, write_bench

    report = run_benchmarks(args.dir, quick=args.quick, only=args.only)
    _, markdown = write_bench(report, args.out)
    print(markdown.read_text())
    return 1 if any("error" in b for b in report["benchmarks"]) else 0


def _cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from vqpipe.errors import UserError
    from vqpipe.train.trainer import fit

    try:
        with open(args.config, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())  # YAML errors span lines: keep the message one line
        raise UserError(f"cannot read the training config {args.config}: {reason}") from None
    result = fit(  # raises ConfigError (a UserError) before Ray starts for a bad config
        args.method,
        config,
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        cpus_per_worker=args.cpus_per_worker,
        storage_path=args.storage_path,
        name=args.name,
        resume=not args.no_resume,
    )
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


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from vqpipe.train.trainer import METHODS

    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--config", required=True, help="YAML with the loop's config keys")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--storage-path", default=None, help="run storage (default ~/vqpipe-runs)")
    parser.add_argument("--name", default="vqpipe-train", help="run name (resume key)")
    parser.add_argument("--no-resume", action="store_true", help="start over")


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", help="local dir, fsspec URI prefix, or manifest (.parquet/.csv/.jsonl)"
    )
    parser.add_argument("--out", required=True, help="output dir or URI for the quality table")
    parser.add_argument(
        "--scorer", action="append", help="NAME[:key=value,...], e.g. gamma:checkpoint=s3://m/g.pth"
    )
    parser.add_argument("--scorers", help="comma-separated scorer names (default: gamma)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-gpus-per-actor", type=float, default=None)
    parser.add_argument("--actors", help="MIN,MAX actors per scorer pool (autoscaling)")
    parser.add_argument("--video-fps", type=float, default=1.0)
    parser.add_argument("--max-frames", type=int, default=32)
    parser.add_argument("--max-bytes", type=int, default=512 * 1024**2, help="per input file")
    parser.add_argument("--max-pixels", type=int, default=178_956_970, help="per image")
    parser.add_argument("--max-duration", type=float, default=4 * 3600.0, help="seconds")
    parser.add_argument("--root", default=None, help="manifest entries must stay inside this")
    parser.add_argument("--rows-per-file", type=int, default=256)
    parser.add_argument("--storage-options", help="JSON, e.g. '{\"anon\": true}'")
    parser.add_argument("--include", action="append", help="glob on relative paths (repeatable)")
    parser.add_argument("--exclude", action="append", help="glob on relative paths (repeatable)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true", help="replace existing results")


def _cmd_scorers(args: argparse.Namespace) -> int:
    from vqpipe.scoring import get_scorer_spec, list_scorers

    names = list_scorers()
    if not names:
        print("no scorers registered yet")
    for name in names:
        print(f"{name:<16}{get_scorer_spec(name).description}")
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    import vqpipe

    print(vqpipe.__version__)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqpipe", description="Score the visual quality of image and video corpora on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="generate a synthetic corpus and score it with Gamma on local Ray",
        description="Generate a synthetic corpus and score it with Gamma on local Ray Data.",
    )
    demo.add_argument(
        "--out", default="vqpipe-demo", help="output directory (default: %(default)s)"
    )
    demo.add_argument("--contents", type=int, default=8, help="synthetic contents (26 images each)")
    demo.add_argument("--seed", type=int, default=2026, help="corpus seed (default: unseen)")
    demo.add_argument("--checkpoint", default=None, help="Gamma checkpoint (default: bundled)")
    demo.add_argument("--num-cpus", type=int, default=None, help="CPUs for local Ray")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(func=_cmd_demo)

    score = sub.add_parser("score", help="score a corpus into a Parquet quality table")
    add_score_arguments(score)
    score.set_defaults(func=_cmd_score)

    filt = sub.add_parser("filter", help="write the keep list of a quality table")
    filt.add_argument("table", help="output dir of a scoring job")
    filt.add_argument("--where", help='pandas query, e.g. "gamma_score >= 0.6"')
    filt.add_argument("--percentile", help="COLUMN:P keeps rows at or above the P-th percentile")
    filt.add_argument("--out", required=True)
    filt.add_argument("--storage-options", help="JSON storage options")
    filt.set_defaults(func=_cmd_filter)

    ev = sub.add_parser("eval", help="SRCC/KRCC/PLCC of a quality table against MOS + report")
    ev.add_argument("predictions", help="quality table: a job's output dir or a Parquet/CSV file")
    ev.add_argument("--mos", required=True, help="MOS table (uri or path, mos[, dataset])")
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument("--by", default="dataset", help="group column (default: %(default)s)")
    ev.add_argument("--bootstrap", type=int, default=200, help="resamples for 95%% intervals")
    ev.add_argument("--storage-options", help="JSON storage options")
    ev.set_defaults(func=_cmd_eval)

    train = sub.add_parser("train", help="fine-tune a method with Ray Train (TorchTrainer)")
    add_train_arguments(train)
    train.set_defaults(func=_cmd_train)

    bench = sub.add_parser("bench", help="run benchmarks/ and write bench.json + bench.md")
    bench.add_argument("--quick", action="store_true", help="the scripts' small settings")
    bench.add_argument("--only", action="append", help="script name without .py (repeatable)")
    bench.add_argument("--dir", default=None, help="benchmarks directory (default: ./benchmarks)")
    bench.add_argument("--out", default="bench", help="output directory (default: %(default)s)")
    bench.set_defaults(func=_cmd_bench)

    scorers = sub.add_parser("scorers", help="list the registered scorers")
    scorers.set_defaults(func=_cmd_scorers)

    version = sub.add_parser("version", help="print the vqpipe version")
    version.set_defaults(func=_cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
