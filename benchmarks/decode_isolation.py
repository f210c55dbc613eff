"""What decoding in a sacrificial subprocess costs: images in-process vs a round trip to a child.

    python benchmarks/decode_isolation.py           # 1 MP JPEG, 64 decodes
    python benchmarks/decode_isolation.py --quick   # 16 decodes

The pipeline decodes videos in a child process (:mod:`vqpipe.media.isolated`) and images in
the decode worker itself. This measures, per image, ``decode_image`` in-process against the
same decode in a warm child that receives the JPEG bytes and sends back the RGB array (the
transfer the pipeline would add), and the warm per-video round trip for a small mp4. Prints
one line; ``ratio`` is child / in-process for images (> 1: the child is slower).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection

import numpy as np
from PIL import Image

from vqpipe.media.decode import decode_image, decode_video
from vqpipe.media.isolated import IsolatedVideoDecoder

CHILD = """
import sys
from multiprocessing.connection import Connection
import numpy as np
from vqpipe.media.decode import decode_image
conn = Connection(int(sys.argv[1]))
while True:
    try:
        data = conn.recv_bytes()
    except EOFError:
        break
    conn.send(np.asarray(decode_image(data)[0]))
"""


def _jpeg(size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    pixels = np.clip(pixels + rng.integers(0, 16, pixels.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(repeats: int = 64, size: tuple[int, int] = (1152, 864)) -> dict:
    data = _jpeg(size)
    inproc = _median_s(lambda: decode_image(data), repeats)
    mine, theirs = socket.socketpair()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with theirs:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env={**os.environ, "PYTHONPATH": root},
        )
    conn = Connection(mine.detach())

    def round_trip() -> None:
        conn.send_bytes(data)
        conn.recv()

    isolated = _median_s(round_trip, repeats)
    conn.close()
    child.wait()

    from tests.lake_data import mp4_bytes

    video = mp4_bytes(frames=8)
    decoder = IsolatedVideoDecoder()
    started = time.perf_counter()
    decoder.decode(video)
    first_video = time.perf_counter() - started
    video_child = _median_s(lambda: decoder.decode(video), max(4, repeats // 8))
    decoder.close()
    video_inproc = _median_s(lambda: decode_video(video), max(4, repeats // 8))
    return {
        "figure": f"image decode {size[0]}x{size[1]} JPEG: child round trip vs in-process",
        "image_inprocess_ms": inproc * 1e3,
        "image_child_ms": isolated * 1e3,
        "ratio": isolated / inproc,
        "video_child_ms": video_child * 1e3,
        "video_inprocess_ms": video_inproc * 1e3,
        "child_start_s": first_video,
        "machine": platform.processor() or platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 decodes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    record = run(repeats=16) if args.quick else run()
    if args.json:
        print(json.dumps(record))
        return
    r = record
    print(
        f"{r['figure']}: {r['image_child_ms']:.1f} ms vs {r['image_inprocess_ms']:.1f} ms "
        f"→ {r['ratio']:.2f}x; 32x32 mp4 (2 frames): child {r['video_child_ms']:.1f} ms vs "
        f"in-process {r['video_inprocess_ms']:.1f} ms; child start {r['child_start_s']:.2f} s"
    )


if __name__ == "__main__":
    main()
