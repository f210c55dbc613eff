"""``vqpipe cascade plan``: the band on a cheap score outside which the expensive one is not
needed (see docs/cascade.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vqpipe.cli.options import add_json, add_storage_options, add_table, storage_options
from vqpipe.errors import UserError

EPILOG = """\
examples:
  vqpipe score ./sample --out ./sample-q --scorer gamma --scorer qalign   # a sample, both
  vqpipe cascade plan ./sample-q --cheap gamma_score --expensive qalign_score --threshold 3.5
  vqpipe cascade plan ./sample-q --cheap gamma_score --expensive qalign_score \\
      --threshold 3.5 --keep below --target 0.995 --json

Keep/drop decisions by the cheap score outside the band [lo, hi] (above it: the side --keep
keeps) and by the expensive score inside it agree with the expensive scorer's own decisions
on at least --target of the sample; of those bands, the one that sends the fewest rows on.
Prints the band, the agreement, the share sent on and the --scorer option to paste.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cascade",
        help="plan a cheap → expensive scorer cascade (the band of when=)",
        description="Cascaded scoring: plan the band on a cheap score inside which rows are "
        "sent on to an expensive scorer (--scorer 'NAME:when=CHEAP between LO and HI').",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="cascade_command", metavar="ACTION", required=True)
    plan = actions.add_parser(
        "plan",
        help="the narrowest band that keeps the curation's decisions",
        description="From a sample scored by both scorers, the band on the cheap score that "
        "keeps the keep/drop decisions equal to the expensive scorer's on --target of the "
        "sample while sending the fewest rows on.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_table(plan)
    plan.add_argument("--cheap", required=True, help="the cheap score column (e.g. gamma_score)")
    plan.add_argument(
        "--expensive", required=True, help="the expensive score column (e.g. qalign_score)"
    )
    plan.add_argument(
        "--threshold",
        type=float,
        required=True,
        help="the curation's threshold on the expensive score",
    )
    plan.add_argument(
        "--keep",
        choices=("above", "below"),
        default="above",
        help="above: keep rows with expensive >= threshold; below: those < it "
        "(default: %(default)s)",
    )
    plan.add_argument(
        "--target",
        type=float,
        default=0.99,
        help="share of the sample whose decision must equal the expensive scorer's, in (0, 1] "
        "(default: %(default)s)",
    )
    add_json(plan, "print the plan as JSON")
    add_storage_options(plan)
    plan.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    import numpy as np

    from vqpipe.rewards.cascade import evaluate_band, plan_band, widen

    if not 0 < args.target <= 1:
        raise UserError(f"--target {args.target}: must be in (0, 1], e.g. 0.99")
    if not np.isfinite(args.threshold):
        raise UserError(f"--threshold {args.threshold}: must be a finite number")
    storage = storage_options(args.storage_options)
    cheap, expensive, spec = _read_sample(args.table, args.cheap, args.expensive, storage)
    both = np.isfinite(cheap) & np.isfinite(expensive)
    if not both.any():
        raise UserError(
            f"{args.table}: no row has both {args.cheap} and {args.expensive} (the sample must "
            "be scored by both scorers)"
        )
    c, e = cheap[both], expensive[both]
    exact = plan_band(c, e, args.threshold, args.keep, args.target)
    lo, hi = widen(exact)
    band = evaluate_band(c, e, lo, hi, args.threshold, args.keep)
    if band.agreement < exact.agreement:  # an empty band that rounding made hold rows
        band, lo, hi = exact, exact.lo, exact.hi
    predicate = f"{args.cheap} between {lo!r} and {hi!r}"
    option = f"{spec}{',' if ':' in spec else ':'}when={predicate}"
    plan = {
        "cheap": args.cheap,
        "expensive": args.expensive,
        "threshold": args.threshold,
        "keep": args.keep,
        "target": args.target,
        "lo": lo,
        "hi": hi,
        "agreement": band.agreement,
        "sent": band.sent,
        "rows": int(both.sum()),
        "rows_without_both": int((~both).sum()),
        "when": predicate,
        "scorer": f"--scorer '{option}'",
    }
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    print(f"band       {args.cheap} in [{lo!r}, {hi!r}]")
    print(f"agreement  {band.agreement:.2%} of {plan['rows']} rows (target {args.target:.2%})")
    print(f"sent on    {band.sent:.2%} of the rows to {args.expensive}")
    if plan["rows_without_both"]:
        print(f"left out   {plan['rows_without_both']} rows without both scores")
    print(f"scorer     {plan['scorer']}")
    return 0


def _read_sample(
    table: str, cheap: str, expensive: str, storage_options: dict[str, Any]
) -> tuple[Any, Any, str]:
    """The two columns as float arrays (NULL → NaN), and the expensive pool's ``--scorer``
    head (its registry name, with ``column=`` when the pool's column is not the name's)."""
    import numpy as np
    import pyarrow.dataset as pads

    from vqpipe.rewards.table import TableSource
    from vqpipe.schema import score_prefix

    source = TableSource(table, storage_options)
    source.require([cheap], "--cheap")
    source.require([expensive], "--expensive")
    data = pads.dataset(source.parts, filesystem=source.fs, schema=source.schema)
    columns = data.to_table(columns=[cheap, expensive])
    if columns.num_rows == 0:
        raise UserError(f"{table}: the table has no rows")
    arrays = []
    for name in (cheap, expensive):
        try:
            arrays.append(columns.column(name).to_numpy(zero_copy_only=False).astype(np.float64))
        except (TypeError, ValueError):
            raise UserError(f"{name}: not a numeric column") from None
    return arrays[0], arrays[1], _pool_spec(table, storage_options, expensive, score_prefix)


def _pool_spec(table: str, storage_options: dict[str, Any], column: str, prefix: Any) -> str:
    """From the table's record when it has one: the pool that wrote ``column``."""
    try:
        from vqpipe.storage import QualityTable

        record = QualityTable(table, storage_options).read_record() or {}
        for pool, facts in (record.get("scorers") or {}).items():
            if column in (facts.get("columns") or []):
                name = str(facts["name"])
                return name if pool == name.lower().replace("-", "_") else f"{name}:column={pool}"
    except Exception:  # a Parquet file, or a table without a record: the column's prefix
        pass
    return prefix(column)
