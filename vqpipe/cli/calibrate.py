"""``vqpipe calibrate``: fit monotone maps of score columns to a MOS scale, or apply one."""

from __future__ import annotations

import argparse
from typing import Any

from vqpipe.cli.options import (
    RAW,
    add_mos_root,
    add_ray_arguments,
    add_seed,
    add_table,
    storage_options,
)
from vqpipe.cli.runtime import on_ray
from vqpipe.errors import UserError

EPILOG = """\
examples:
  vqpipe calibrate ./quality --mos mos.csv --out calib.json              # + calib.png
  vqpipe calibrate ./quality --mos mos.csv --method isotonic --column gamma --out calib.json
  vqpipe calibrate --apply calib.json ./quality --out ./quality-calibrated/
  vqpipe score ./images --out ./quality --calibration calib.json

Fitting reads only the table's rows matched with the MOS table (as vqpipe eval matches them:
by uri, by path under --mos-root, by unique file name)
and prints CV SRCC / PLCC; --apply adds <column>_calibrated (gamma_score → gamma_calibrated)
over a whole table on Ray Data and writes a Parquet dataset directory.
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "calibrate",
        help="map score columns onto a MOS scale (fit with --mos, or --apply a calibration)",
        description="Fit a monotone map (logistic or isotonic, k-fold cross-validated) from "
        "each score column to MOS and write it as JSON with a plot; or apply such a file to "
        "a table.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    add_table(parser)
    parser.add_argument(
        "--mos",
        help="fit: MOS table (CSV / JSONL / Parquet) with uri (or path) and mos columns "
        "(no default: give --mos or --apply)",
    )
    parser.add_argument(
        "--apply",
        metavar="CALIB.json",
        help="apply this calibration instead of fitting one (default: fit)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="fit: the calibration JSON (the plot goes beside it, .png); --apply: the output "
        "Parquet dataset directory",
    )
    parser.add_argument(
        "--method",
        choices=("logistic", "isotonic"),
        default="logistic",
        help="logistic: monotone logistic5 (as PLCC fits it); isotonic: pool-adjacent-"
        "violators (default: %(default)s)",
    )
    parser.add_argument(
        "--column",
        action="append",
        metavar="COLUMN",
        help="a score column to calibrate (gamma or gamma_score), repeatable (default: every "
        "<scorer>_score column)",
    )
    parser.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds (default: %(default)s)"
    )
    add_seed(parser, "fold assignment seed (default: 0)")
    add_mos_root(parser)
    add_ray_arguments(parser)
    parser.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    storage = storage_options(args.storage_options)
    if (args.mos is None) == (args.apply is None):
        raise UserError("calibrate: give --mos MOS to fit a calibration, or --apply CALIB.json")
    if args.apply:
        from vqpipe.rewards.calibrate import ApplyJob

        job = ApplyJob(args.apply, args.table, args.out, storage)
        result = on_ray(args, "calibrate", job.run, out=args.out)
        print(f"added {', '.join(result['columns'])} to {result['rows']} rows → {result['out']}")
        return 0
    from vqpipe.rewards.calibrate import calibrate

    record = calibrate(
        args.table,
        args.mos,
        args.out,
        method=args.method,
        columns=args.column,
        folds=args.folds,
        seed=args.seed,
        storage_options=storage,
        mos_root=args.mos_root,
    )
    for name, entry in record["columns"].items():
        cv, kind = entry["cv"], entry["map"].get("kind", entry["map"]["method"])
        print(
            f"{name:<22}→ {entry['output']:<24}{kind:<10}n={entry['n']:<6}"
            f"CV SRCC {cv['srcc']:.4f}  PLCC {cv['plcc']:.4f}  RMSE {cv['rmse']:.4f}"
        )
    print(f"{args.folds}-fold CV → {args.out} (plot: {record['plot']})")
    return 0
