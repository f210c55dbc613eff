"""``vqpipe fuse``: a calibrated ensemble score and the scorers' disagreement."""

from __future__ import annotations

import argparse
from typing import Any

from vqpipe.cli.options import RAW, add_mos_root, add_ray_arguments, add_table, storage_options
from vqpipe.cli.runtime import on_ray

EPILOG = """\
examples:
  vqpipe fuse ./quality --calibration calib.json --out ./fused/              # equal weights
  vqpipe fuse ./quality --calibration calib.json --mos mos.csv --out ./fused/ # NNLS weights
  vqpipe eval ./fused --mos mos.csv --out report/     # ensemble beside the single scorers

Adds <column>_calibrated for each column of the calibration, ensemble_score (their weighted
mean; NULL scores drop out, the other weights are renormalised) and ensemble_spread (the
standard deviation of a row's calibrated scores). Writes a Parquet dataset directory with
_fuse.json (weights, and with --mos the cross-validated SRCC / PLCC and the URIs the weights
were fitted on: vqpipe eval warns when it evaluates ensemble_score on those rows).
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "fuse",
        help="calibrated ensemble of scorers: ensemble_score and ensemble_spread",
        description="Combine the calibrated scores of a table into ensemble_score (weights "
        "by cross-validated non-negative least squares against --mos, else equal) and "
        "ensemble_spread.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    add_table(parser)
    parser.add_argument(
        "--calibration", required=True, help="the JSON of vqpipe calibrate (its columns fuse)"
    )
    parser.add_argument(
        "--mos", default=None, help="MOS table to fit the weights on (default: equal weights)"
    )
    parser.add_argument("--out", required=True, help="output Parquet dataset directory or URI")
    add_mos_root(parser)
    add_ray_arguments(parser)
    parser.set_defaults(func=_cmd_fuse)


def _cmd_fuse(args: argparse.Namespace) -> int:
    from vqpipe.rewards.fuse import FuseJob

    storage = storage_options(args.storage_options)
    job = FuseJob(args.table, args.calibration, args.out, args.mos, storage, args.mos_root)
    result = on_ray(args, "fuse", job.run, out=args.out)
    weights = ", ".join(f"{k} {v:.3f}" for k, v in result["weights"].items())
    print(f"weights: {weights}" + ("" if args.mos else " (equal: no --mos)"))
    for name, cv in (result.get("cv") or {}).items():
        print(f"  CV {name:<22}SRCC {cv['srcc']:.4f}  PLCC {cv['plcc']:.4f}")
    print(f"ensemble_score, ensemble_spread for {result['rows']} rows → {result['out']}")
    return 0
