"""The ``vqpipe`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


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
