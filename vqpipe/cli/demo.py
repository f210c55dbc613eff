"""``vqpipe demo``: a synthetic corpus, scored with Gamma on local Ray and evaluated."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vqpipe.cli.options import RAW, add_console_flags, add_json, add_seed, verbosity

EPILOG = """\
examples:
  vqpipe demo                                    # 8 contents x 26 images, into ./vqpipe-demo
  vqpipe demo --contents 2 --num-cpus 2 --out /tmp/demo
  vqpipe demo --checkpoint gamma.safetensors --json
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="generate a synthetic corpus and score it with Gamma on local Ray",
        description="Generate a synthetic corpus, score it with Gamma on local Ray Data and "
        "evaluate the scores against its MOS.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument(
        "--out", default="vqpipe-demo", help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--contents",
        type=int,
        default=8,
        help="synthetic contents, 26 images each (default: %(default)s)",
    )
    add_seed(parser, "corpus seed (default: %(default)s, unseen in training)", default=2026)
    parser.add_argument(
        "--checkpoint", default=None, help="Gamma checkpoint (default: the bundled demo one)"
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs for local Ray (default: all)"
    )
    add_json(parser, "print the summary as JSON")
    add_console_flags(parser, on_subcommand=True)
    parser.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from vqpipe.console import StatusLine, ray_output_kept_out, terminal
    from vqpipe.demo import format_summary, run_demo

    level = verbosity(args)
    with StatusLine(terminal(), level) as status:
        status.update("generating the corpus and scoring it on local Ray")
        with ray_output_kept_out(level, "demo"):
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
