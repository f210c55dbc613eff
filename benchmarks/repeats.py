"""What removing URIs repeated across manifest shards costs once the shards are committed.

    python benchmarks/repeats.py            # 1e5 and 1e6 written rows
    python benchmarks/repeats.py --quick    # 2e4 and 2e5
    python benchmarks/repeats.py --json     # records for vqpipe bench

An output holding parts of ``rows`` rows (10,000 a part, as one manifest shard each), 1% of
its URIs written a second time in a later part, settled by
:func:`vqpipe.storage.repeats.drop_repeats` — on the driver (pyarrow) and with Ray Data (the
path outputs past ``DRIVER_MAX_ROWS`` take), side by side on copies of the same output. Each
record gives the seconds and the rows removed (must be the repeats), the smaller size against
the larger: how the pass grows with the output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

PART_ROWS = 10_000


def write_output(root: Path, rows: int, repeat: float = 0.01) -> tuple[list[str], list[str], int]:
    """Parts of ``rows`` rows; a fraction ``repeat`` of each part's URIs is written again in
    the next part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vqpipe.storage.parts import part_name

    root.mkdir(parents=True)
    paths, ids, repeats = [], [], 0
    for start in range(0, rows, PART_ROWS):
        uris = [f"s3://lake/img{start + i:09d}.jpg" for i in range(min(PART_ROWS, rows - start))]
        if start:  # the previous part's last URIs, written again at the start of this one
            n = int(PART_ROWS * repeat)
            uris[:n] = [f"s3://lake/img{start - n + i:09d}.jpg" for i in range(n)]
            repeats += n
        sid = f"m{start // PART_ROWS:06d}-00000000"
        path = root / part_name("0000000a", f"{sid}-00000-last")
        table = pa.table({"uri": uris, "score": pa.array([0.5] * len(uris), pa.float32())})
        pq.write_table(table, path)
        paths.append(str(path))
        ids.append(sid)
    return paths, ids, repeats


def settle(root: Path, ids: list[str], driver: bool) -> dict:
    import vqpipe.storage.repeats as dedupe

    paths = sorted(str(p) for p in root.glob("part-*.parquet"))
    limit = dedupe.DRIVER_MAX_ROWS
    dedupe.DRIVER_MAX_ROWS = 1 << 62 if driver else 0
    try:
        start = time.perf_counter()
        removed = dedupe.drop_repeats(str(root), paths, ids, set()).rows
        seconds = time.perf_counter() - start
    finally:
        dedupe.DRIVER_MAX_ROWS = limit
    return {"seconds": round(seconds, 2), "removed": removed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2e4 and 2e5 rows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    sizes = [20_000, 200_000] if args.quick else [100_000, 1_000_000]
    records = []
    with tempfile.TemporaryDirectory(prefix="vqpipe-repeats-") as tmp:
        runs = []
        for rows in sizes:
            source = Path(tmp) / f"out{rows}"
            _, ids, repeats = write_output(source, rows)
            found = {"rows": rows, "repeats": repeats}
            for label in ("ray", "driver"):
                copy = Path(tmp) / f"{label}{rows}"
                shutil.copytree(source, copy)
                found[label] = settle(copy, ids, driver=label == "driver")
                assert found[label]["removed"] == repeats, found
            runs.append(found)
            print(f"repeats: {found}", file=sys.stderr, flush=True)
        small, big = runs
        growth = big["rows"] / small["rows"]
        for label in ("driver", "ray"):
            records.append(
                {
                    "figure": f"repeats pass ({label}), {big['rows']:.0e} vs {small['rows']:.0e} "
                    f"written rows ({growth:.0f}x the rows)",
                    "result": f"{big[label]['seconds']} s vs {small[label]['seconds']} s",
                    "ratio": big[label]["seconds"] / max(small[label]["seconds"], 1e-3),
                    "runs": runs,
                }
            )
    ray.shutdown()
    if args.json:
        print(json.dumps(records, indent=2, default=str))
    else:
        for r in records:
            print(f"{r['figure']}: {r['result']} (ratio {r['ratio']:.2f})")
        for run in runs:
            print(f"    {run}")


if __name__ == "__main__":
    main()
