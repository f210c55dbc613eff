"""``vqpipe serve`` vs in-process scoring of the same images, on the CPU with the demo Gamma.

    python benchmarks/serve.py                # concurrency 1, 8, 32; 3 rounds
    python benchmarks/serve.py --quick        # concurrency 1, 8; 2 rounds
    python benchmarks/serve.py --json         # the records `vqpipe bench` reads

The service runs as ``vqpipe serve --scorer gamma:device=cpu,batch_size=B,num_cpus=<all cores>
--address local`` in a subprocess (its own local Ray; the replica gets every core, as the
in-process baseline has: Ray sets a replica's torch threads to its ``num_cpus``); C client
threads each send requests of one image (a reward call) over HTTP. The baseline is the same
images scored in this process by the batch API (``create_scorer("gamma").score``) one request
at a time: the serial reward loop a service replaces. Rounds alternate service and baseline
(each on an otherwise idle machine), repeated; the figures are each round's requests/s (min
and median over rounds) and the latency p50 / p99 of the requests of all rounds. The images
are decoded from PNG bytes on both sides.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def images(n: int, size: int = 256) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size + 32, 3), dtype=np.uint8)).save(
            buffer, format="PNG"
        )
        out.append(buffer.getvalue())
    return out


def start_service(batch_size: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    command = [
        *(sys.executable, "-m", "vqpipe.cli", "serve", "--address", "local"),
        *("--scorer", f"gamma:device=cpu,batch_size={batch_size},num_cpus={os.cpu_count()}"),
        *("--port", str(port)),
        *("--batch-wait-ms", str(wait_ms)),
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, client, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while client.healthz().get("status") != "ok":
        if proc.poll() is not None:
            raise SystemExit(
                f"vqpipe serve exited {proc.returncode}: {proc.stderr.read().decode()}"
            )
        if time.monotonic() > deadline:
            raise SystemExit(f"vqpipe serve not ready after {timeout:g} s")
        time.sleep(0.5)


def post(url: str, body: bytes) -> float:
    """One request's latency in seconds (the answer checked: one score, no error)."""
    start = time.perf_counter()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    elapsed = time.perf_counter() - start
    assert answer["errors"] == [None] and answer["scores"][0] is not None, answer
    return elapsed


def service_round(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[float]]:
    """Wall time of all ``bodies`` sent by ``clients`` threads, and each request's latency."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda b: post(f"{url}/score/gamma", b), bodies))
    return time.perf_counter() - start, latencies


def baseline_round(scorer, datas: list[bytes]) -> tuple[float, list[float]]:
    """The same requests scored in this process, one after another."""
    latencies = []
    start = time.perf_counter()
    for data in datas:
        t = time.perf_counter()
        scorer.score([Image.open(io.BytesIO(data))])
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer levels and rounds")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument("--requests", type=int, default=None, help="requests per round")
    parser.add_argument("--batch-size", type=int, default=16, help="the service's batch limit")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    levels = [1, 8] if args.quick else [1, 8, 32]
    rounds = 2 if args.quick else 3
    n = args.requests or (32 if args.quick else 64)
    datas = images(n)
    bodies = [
        json.dumps({"items": [{"image": base64.b64encode(d).decode()}]}).encode() for d in datas
    ]

    import vqpipe
    from vqpipe.client import VQClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = vqpipe.create_scorer("gamma", device="cpu")
    proc, url = start_service(args.batch_size, args.batch_wait_ms)
    try:
        wait_ready(proc, VQClient(url))
        service_round(url, bodies[:8], 8)  # warm-up: the replica's first batches
        baseline_round(scorer, datas[:4])
        times: dict[str, list[float]] = {}
        lat: dict[str, list[float]] = {}
        for _ in range(rounds):
            for clients in levels:
                wall, latencies = service_round(url, bodies, clients)
                times.setdefault(f"serve c={clients}", []).append(wall)
                lat.setdefault(f"serve c={clients}", []).extend(latencies)
            wall, latencies = baseline_round(scorer, datas)
            times.setdefault("in-process", []).append(wall)
            lat.setdefault("in-process", []).extend(latencies)
        stats = json.loads(urllib.request.urlopen(f"{url}/stats", timeout=30).read())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    base = n / statistics.median(times["in-process"])
    records = []
    for clients in levels:
        key = f"serve c={clients}"
        rates = [n / t for t in times[key]]
        records.append(
            {
                "figure": f"vqpipe serve, {clients} concurrent clients, 1 image/request",
                "requests_per_s": statistics.median(rates),
                "requests_per_s_min": min(rates),
                "p50_ms": percentile(lat[key], 50),
                "p99_ms": percentile(lat[key], 99),
                "baseline_requests_per_s": base,
                "baseline_p50_ms": percentile(lat["in-process"], 50),
                "baseline_p99_ms": percentile(lat["in-process"], 99),
                "ratio": statistics.median(rates) / base,
                "requests": n,
                "rounds": rounds,
                "batch_size": args.batch_size,
                "batch_wait_ms": args.batch_wait_ms,
                "max_batch_observed": stats["columns"]["gamma"]["max_batch_size"],
                "model": "gamma (demo checkpoint)",
                "device": "cpu",
                "dtype": "fp32",
            }
        )
    if args.json:
        print(json.dumps(records, indent=2))
        return
    for r in records:
        print(
            f"{r['figure']}: {r['requests_per_s']:.2f} req/s (min {r['requests_per_s_min']:.2f}), "
            f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms vs in-process serial "
            f"{r['baseline_requests_per_s']:.2f} req/s (p50 {r['baseline_p50_ms']:.0f} ms, "
            f"p99 {r['baseline_p99_ms']:.0f} ms) → {r['ratio']:.2f}x "
            f"(largest batch {r['max_batch_observed']})"
        )


if __name__ == "__main__":
    main()
