"""Peak memory of a job's whole process tree (driver + Ray workers) on two inputs that used to
blow it up, each against a baseline job on the same input without the load.

    python benchmarks/input_memory.py                       # both cases, this checkout
    python benchmarks/input_memory.py --code /work/main     # the same against another checkout
    python benchmarks/input_memory.py --quick               # a 256 MiB bomb, 64 videos
    python benchmarks/input_memory.py --json                # records for vqpipe bench

(a) **Parquet bomb**: a ~35 KB Parquet file (zstd) whose row 3 is a 1 GiB cell (zeros behind a
    JPEG header) between six small images, scored with ``--max-bytes 10000000``; baseline: the
    same file with a small image in its place.
(b) **Videos in one block**: one WebDataset tar of 256 small mp4 clips (64x64, 32 frames at
    8 fps; under 1 MB in all: one fragment, once one decode block) scored with
    ``--video-fps 8`` (all 32 frames sampled) by ``brightness:size=448``, which preprocesses
    like Q-Align (448 px uint8); baseline: a tar of one clip.

Each job is ``vqpipe score … --address local`` (its own Ray instance) run
as its own driver process; the Resident Set Size (RSS) of the driver and every process below it
(GCS, raylet, Ray workers, decoder subprocesses) is summed with psutil every 50 ms, and its
peak kept. Growth = the job's peak − its baseline's peak. Target (issue "Inputs as users have
them"): ≤ 1.5 GB each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TARGET_MB = 1500
BOMB_BYTES = 1 << 30
MAX_BYTES = 10_000_000
VIDEOS = 256
SAMPLE_S = 0.05


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _mp4(seed: int, frames: int = 32, size: int = 64) -> bytes:
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            pixels = np.full((size, size, 3), (seed * 7 + i * 13) % 256, dtype=np.uint8)
            pixels[: size // 4] = rng.integers(0, 256, 3, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def write_parquet(folder: Path, bomb_bytes: int) -> Path:
    """Six small images and, at row 3, a cell of ``bomb_bytes`` zeros behind a JPEG header
    (0: a seventh small image)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    cells = [_jpeg(i) for i in range(7)]
    if bomb_bytes:
        cells[3] = b"\xff\xd8\xff" + bytes(bomb_bytes)
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": c, "path": None} for c in cells], kind)})
    path = folder / "bomb.parquet"
    pq.write_table(table, path, compression="zstd", compression_level=19)
    return path


def write_videos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "videos-00000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            data = _mp4(i)
            info = tarfile.TarInfo(f"{i:06d}.mp4")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        with contextlib.suppress(psutil.Error):  # a process that just ended
            total += member.memory_info().rss
    return total


def run_job(
    source: Path, out: Path, extra: list[str], code: str | None, timeout_s: float = 900
) -> dict:
    """One ``vqpipe score`` driver; its process tree's peak RSS (MB), wall time, exit code."""
    import psutil

    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "RAY_ADDRESS": ""}
    if code:
        env["PYTHONPATH"] = code
    args = ["score", str(source), "--out", str(out), "--address", "local", *extra]
    script = "import sys; from vqpipe.cli import main; sys.exit(main(sys.argv[1:]))"
    log = out.parent / f"{out.name}.log"
    start = time.perf_counter()
    with open(log, "w") as sink:
        driver = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=env,
            cwd=out.parent,  # not the checkout: `python -c` imports from its folder first
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        proc, peak = psutil.Process(driver.pid), 0
        while driver.poll() is None:
            peak = max(peak, _tree_rss(proc))
            if time.perf_counter() - start > timeout_s:
                os.killpg(driver.pid, 9)  # our own driver's process group only
                break
            time.sleep(SAMPLE_S)
    return {
        "peak_mb": peak / 1e6,
        "seconds": time.perf_counter() - start,
        "rc": driver.wait(),
        "log": str(log),
    }


def _rows(out: Path) -> tuple[int, int]:
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(out.glob("*.parquet")))
    return table.num_rows, table.num_rows - table.column("error").null_count


def case(name: str, make, extra: list[str], code: str | None, tmp: Path) -> dict:
    base_src, load_src = make(tmp / f"{name}-base", False), make(tmp / f"{name}-load", True)
    base = run_job(base_src, tmp / f"{name}-base-out", extra, code)
    load = run_job(load_src, tmp / f"{name}-load-out", extra, code)
    rows, errors = _rows(tmp / f"{name}-load-out") if load["rc"] == 0 else (0, 0)
    return {
        "figure": f"input memory: {name}, peak RSS growth (target <= {TARGET_MB} MB)",
        "case": name,
        "input_bytes": sum(p.stat().st_size for p in load_src.parent.iterdir()),
        "baseline_peak_mb": round(base["peak_mb"]),
        "peak_mb": round(load["peak_mb"]),
        "growth_mb": round(load["peak_mb"] - base["peak_mb"]),
        "seconds": round(load["seconds"], 1),
        "rows": rows,
        "error_rows": errors,
        "rc": load["rc"],
        "ok": load["rc"] == 0 and load["peak_mb"] - base["peak_mb"] <= TARGET_MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--code",
        default=str(Path(__file__).resolve().parents[1]),
        help="the vqpipe checkout to measure (PYTHONPATH; default: this one)",
    )
    parser.add_argument("--quick", action="store_true", help="a 256 MiB bomb and 64 videos")
    parser.add_argument("--json", action="store_true", help="print JSON records only")
    parser.add_argument("--only", choices=["bomb", "videos"], help="one case")
    args = parser.parse_args()
    bomb, videos = (256 << 20, 64) if args.quick else (BOMB_BYTES, VIDEOS)
    cases = {
        "bomb": (
            lambda d, load: write_parquet(d, bomb if load else 0),
            ["--scorer", "brightness", "--max-bytes", str(MAX_BYTES)],
        ),
        "videos": (
            lambda d, load: write_videos(d, videos if load else 1),
            ["--scorer", "brightness:size=448", "--video-fps", "8"],
        ),
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="vqpipe-input-memory-") as tmp:
        for name, (make, extra) in cases.items():
            if args.only and name != args.only:
                continue
            results.append(case(name, make, extra, args.code, Path(tmp)))
    if args.json:
        print(json.dumps(results))
        return
    print(f"code: {args.code}; target: growth ≤ {TARGET_MB} MB")
    print(f"{'case':8} {'input':>10} {'baseline':>9} {'peak':>8} {'growth':>8} {'s':>6} rows")
    for r in results:
        print(
            f"{r['case']:8} {r['input_bytes'] / 1e3:>8.0f}KB {r['baseline_peak_mb']:>7}MB "
            f"{r['peak_mb']:>6}MB {r['growth_mb']:>6}MB {r['seconds']:>6} "
            f"{r['rows']} ({r['error_rows']} errors){'' if r['ok'] else '  ✗ over target'}"
        )
    for r in results:
        print(f"input_memory {r['case']}: +{r['growth_mb']} MB peak RSS over its baseline")


if __name__ == "__main__":
    main()
