"""``vqpipe compare``: P(b ≻ a) for given image pairs with a Compare2Score LMM, as a Ray job."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vqpipe.cli.options import (
    RAW,
    add_address,
    add_console_flags,
    add_limit,
    add_media_limits,
    add_no_resume,
    add_pool_flags,
    add_progress_every,
    add_root,
    add_rows_per_file,
    add_storage_options,
    media_limits,
    pool_defaults,
    storage_options,
    verbosity,
)
from vqpipe.cli.runtime import shutdown_ray
from vqpipe.errors import UserError

EPILOG = """\
examples:
  vqpipe compare pairs.parquet --out ./prefs
  vqpipe compare s3://lake/pairs/ --out s3://lake/prefs/ \\
      --scorer compare2score:checkpoint=s3://models/compare2score,batch_size=32,num_gpus=1
  vqpipe compare pairs.csv --out ./prefs \\
      --scorer compare2score-lmm:checkpoint=/models/llava-1.5-7b-hf

  vqpipe pairs ./quality --group prompt_id --score gamma_score --out ./pairs/
  vqpipe compare ./pairs/ --out ./prefs          # p_b_better = P(chosen better than rejected)
  vqpipe compare pairs.csv --a-column left --b-column right --out ./prefs

The input: Parquet / CSV / JSONL manifests (a file, a directory, a glob) with uri_a and uri_b
columns, or vqpipe pairs' output (uri_rejected is read as a, uri_chosen as b), or the columns
--a-column / --b-column name; other columns are carried. Each pair is asked in both orders:
p_b_better_ab (a first, the official P(b > a)), p_b_better_ba (b first: 1 - P(a > b)),
p_b_better (their mean), order_gap (their difference) and each order's five level
probabilities. Rerunning the same
command resumes: committed manifest shards are skipped.
"""


def add_parser(sub: Any) -> None:
    from vqpipe.pipeline.config import POOL_KEYS

    pool_keys = ", ".join(k for k in POOL_KEYS if k not in ("column", "decode"))
    parser = sub.add_parser(
        "compare",
        help="P(b better than a) for image pairs with a Compare2Score LMM",
        description="Compare the two images of each row of a pairs manifest (uri_a, uri_b, "
        "or vqpipe pairs' output) "
        "with a Compare2Score LMM, in both orders, into a Parquet table (one row per pair), "
        "on local Ray or a cluster.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument(
        "input", help="pairs manifest(s): a Parquet / CSV / JSONL file, directory, glob or URI"
    )
    parser.add_argument("--out", required=True, help="output dir or URI for the pair table")
    parser.add_argument(
        "--a-column",
        metavar="COLUMN",
        default=None,
        help="the manifest column read as uri_a (default: uri_a, else vqpipe pairs' uri_rejected)",
    )
    parser.add_argument(
        "--b-column",
        metavar="COLUMN",
        default=None,
        help="the manifest column read as uri_b (default: uri_b, else vqpipe pairs' uri_chosen)",
    )
    parser.add_argument(
        "--scorer",
        default="compare2score",
        metavar="NAME[:KEY=VALUE,...]",
        help="the comparison model: compare2score or compare2score-lmm with their keys "
        f"(default: %(default)s); pool keys: {pool_keys}; "
        "batch_size = pairs per actor call (both orders run in one forward)",
    )
    add_pool_flags(
        parser,
        batch_size_help="pairs per actor call for a --scorer without batch_size= (default: per "
        "scorer and device: compare2score 16 on a GPU, 4 on CPU)",
        num_gpus_help="GPUs per actor without num_gpus= (default: 0, CPU)",
        actors_help="actors without actors= (default: 1)",
    )
    add_address(parser)
    add_root(parser, "uri_a / uri_b must stay inside this prefix (default: no restriction)")
    add_rows_per_file(parser, 256, "pairs per output part (default: 256)")
    add_media_limits(parser, video=False)
    add_storage_options(parser, example=True)
    add_limit(parser, "compare the first N pairs")
    add_no_resume(parser, "replace existing results", "resume, comparing only uncommitted shards")
    add_progress_every(parser, in_place_note=False)
    add_console_flags(parser, on_subcommand=True)
    parser.set_defaults(func=_cmd_compare)


def compare_config_from_args(args: argparse.Namespace) -> Any:
    """The JobConfig of a compare job (one scorer pool; inputs read as manifests)."""
    from vqpipe.pipeline.config import JobConfig, ScorerOptions

    spec = ScorerOptions.parse(args.scorer, **pool_defaults(args))
    if spec.decode != "cpu":
        raise UserError(f"--scorer {args.scorer!r}: vqpipe compare decodes on the CPU only")
    return JobConfig(
        input=args.input,
        output=args.out,
        scorers=[spec],
        storage_options=storage_options(args.storage_options),
        limits=media_limits(args),
        rows_per_file=args.rows_per_file,
        limit=args.limit,
        resume=not args.no_resume,
        root=args.root,
        address=args.address,
        input_format="manifest",
    )


def _cmd_compare(args: argparse.Namespace) -> int:
    from vqpipe.console import StatusLine, ray_output_kept_out, terminal
    from vqpipe.pipeline.compare_job import run_compare

    level = verbosity(args)
    config = compare_config_from_args(args)
    with StatusLine(terminal(), level, every_s=args.progress_every) as status:
        status.update("starting: checks, inputs, Ray, the first part")
        with ray_output_kept_out(level, "compare"):
            summary = run_compare(
                config,
                progress=status.progress,
                progress_every_s=1.0 if status.tty else args.progress_every,
                a_column=args.a_column,
                b_column=args.b_column,
            )
            shutdown_ray()
        if not summary["compared_pairs"]:
            done = f"{summary['shards_already_done']} of {summary['shards']} shards committed"
            status.update(f"nothing left to compare: {done}", force=True)
    print(json.dumps(summary, indent=2))
    return 0
