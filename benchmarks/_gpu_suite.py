"""The GPU suite behind ``benchmarks/gpu_suite.sh`` (``vqpipe bench`` skips ``_*`` files).

One command, at most 8 minutes on one H100/H200, one JSON (``$OUT/gpu_suite.json``; ``$OUT``
defaults to ``./gpu_suite_out``). Sections, each its own subprocess with its own share of the
budget (one that fails or runs long is recorded as such, the rest still run; the JSON is
written after every section):

* ``gamma``, ``qalign``, ``compare2score``: each scorer at its real shape (random weights,
  bf16): images/s of ``scorer.predict`` on a full batch in a timed loop; FLOPs per image
  (``FlopCounterMode`` under ``torch.no_grad``, on the same batch; the scorers'
  ``inference_mode`` is swapped for ``no_grad`` while counting, so it counts the very calls
  that are timed); MFU against the device's bf16 dense peak; GPU busy % (NVML, else
  ``torch.cuda.utilization``, else ``nvidia-smi``) sampled during the timed loop; host-path ms
  per image (the actor's path from the decode worker's ``.npy`` bytes to the normalised tensor
  on the device: ``np.load``, ``np.stack``, ``pin_memory``, ``.to(device)``); and decode +
  preprocess images/s on one core for a 1 MP and a 12 MP JPEG.
* ``job``: a full ``vqpipe score`` job (Gamma ViT-B/16 in one GPU actor) over a synthetic
  corpus large enough that scoring, not start-up, is measured: its steady rate is the job's
  own ``scoring_items_per_s`` (rows committed after the first part ÷ time since it), with GPU
  busy % over the same steady phase and the ratio to the isolated Gamma rate.

``--dry-run`` runs every section on the CPU with tiny configs and a small corpus (under 3
minutes on a laptop): FLOPs must be finite and > 0 for every scorer; MFU is against a stated
nominal CPU peak; GPU busy % is null with the reason. A section's failure (FLOP counting
included) is an ``error`` string in the JSON and makes the suite exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCORERS = ("gamma", "qalign", "compare2score")
# bf16 dense peak TFLOP/s by device name (first match wins); others: --peak-tflops
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
# CPU dry run: a stated nominal peak, so MFU is a finite number (cores × 2.5 GHz × 32 fp32
# FLOP/cycle, AVX2 with two FMA units)
CPU_FLOP_PER_CYCLE, CPU_GHZ = 32, 2.5
# share of the budget per section (GPU); the dry run gives each a fixed CPU-sized limit
PLAN = {"gamma": 0.15, "qalign": 0.22, "compare2score": 0.22, "job": 0.33}
# seconds of timed loop per scorer section
LOOP_S = {"gamma": 15.0, "qalign": 20.0, "compare2score": 20.0}
BATCH = {"gamma": (4, 256), "qalign": (4, 64), "compare2score": (1, 32)}  # (dry run, GPU)


# --------------------------------------------------------------------------- GPU busy %
class UtilisationSampler:
    """GPU utilisation (% of time a kernel ran) and memory, sampled every ``interval_s`` via
    NVML (``pynvml``), else ``torch.cuda.utilization``, else ``nvidia-smi``; ``reason`` says
    why there are no samples."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []  # (time, util %, memory GiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.source = "none"
        self.reason: str | None = None

    def _reader(self) -> Callable[[], tuple[float, float]] | None:
        import torch

        if not torch.cuda.is_available():
            self.reason = "no CUDA device (CPU run): GPU busy % is not measured"
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self.source = "nvml"

            def read() -> tuple[float, float]:
                util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                return float(util), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30

            return read
        except Exception as exc:
            self.reason = f"pynvml: {type(exc).__name__}: {exc}"
        try:
            torch.cuda.utilization()
            self.source = "torch.cuda.utilization"
            return lambda: (float(torch.cuda.utilization()), torch.cuda.memory_reserved() / 2**30)
        except Exception as exc:
            self.reason = f"{self.reason}; torch.cuda.utilization: {type(exc).__name__}: {exc}"
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            query = [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-i",
                str(torch.cuda.current_device()),
            ]

            def read() -> tuple[float, float]:
                util, mem = subprocess.check_output(query, text=True).strip().split(",")
                return float(util), float(mem) / 1024

            return read
        self.reason = f"{self.reason}; no nvidia-smi"
        return None

    def _run(self) -> None:
        read = self._reader()
        while read is not None and not self._stop.wait(self.interval_s):
            try:
                self.samples.append((time.perf_counter(), *read()))
            except Exception as exc:
                self.reason = f"sampling stopped: {type(exc).__name__}: {exc}"
                return

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self, since: float | None = None) -> dict[str, Any]:
        """Mean busy % of the samples taken after ``since`` (perf_counter), or null + reason."""
        samples = [s for s in self.samples if since is None or s[0] >= since]
        if not samples:
            return {
                "busy_pct": None,
                "source": self.source,
                "samples": 0,
                "reason": self.reason or "no samples in the measured interval",
            }
        util = [u for _, u, _ in samples]
        return {
            "busy_pct": round(sum(util) / len(util), 1),
            "min_pct": min(util),
            "source": self.source,
            "samples": len(util),
            "max_memory_gib": round(max(m for _, _, m in samples), 2),
        }


# --------------------------------------------------------------------------- helpers
def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: Any, override_tflops: float | None) -> tuple[float, str]:
    """The device's peak FLOP/s and where the number comes from."""
    import torch

    if override_tflops:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{key} bf16 dense {tflops:g} TFLOP/s"
        return 989e12, f"{name} not in the table: assumed H100 bf16 dense 989 TFLOP/s"
    cores = os.cpu_count() or 1
    peak = cores * CPU_GHZ * 1e9 * CPU_FLOP_PER_CYCLE
    return peak, (
        f"nominal CPU peak: {cores} cores x {CPU_GHZ} GHz x {CPU_FLOP_PER_CYCLE} fp32 FLOP/cycle "
        f"= {peak / 1e12:.2f} TFLOP/s"
    )


@contextlib.contextmanager
def no_grad_for_inference_mode() -> Iterator[None]:
    """``torch.inference_mode`` replaced by ``torch.no_grad`` (FlopCounterMode cannot count
    under inference mode) while counting; the scorers look it up at call time."""
    import torch

    original = torch.inference_mode
    torch.inference_mode = lambda *a, **k: torch.no_grad()  # type: ignore[assignment]
    try:
        with torch.no_grad():
            yield
    finally:
        torch.inference_mode = original  # type: ignore[assignment]


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """``model``'s parameters with ``requires_grad`` off (FlopCounterMode's module tracker
    asserts on a parameter that requires grad passed as a module input, e.g. learnable
    queries), restored after."""
    params = [] if model is None else [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def materialised_causal_bias() -> Iterator[None]:
    """The mPLUG-Owl2 decoder's lower-right causal bias (a tensor subclass, which cannot be
    made under FlopCounterMode's dispatch) as the boolean mask it stands for, while counting:
    SDPA's FLOPs are the same for either."""
    import torch

    from vqpipe.models.mplug_owl2 import llama

    original = llama.attention_mask_4d

    def materialised(key_mask: Any, q_len: int, past_len: int, batch: int, device: Any) -> Any:
        if key_mask is None and past_len and q_len > 1:  # causal_lower_right, as a tensor
            ones = torch.ones(q_len, past_len + q_len, dtype=torch.bool, device=device)
            return ones.tril(past_len)
        return original(key_mask, q_len, past_len, batch, device)

    llama.attention_mask_4d = materialised
    try:
        yield
    finally:
        llama.attention_mask_4d = original


def count_flops(fn: Callable[[], Any], model: Any) -> tuple[float | None, str | None]:
    """FLOPs of one call (FlopCounterMode: matmuls, convs, attention) and the error, if any:
    a failure is reported, never swallowed."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with (
            frozen(model),
            no_grad_for_inference_mode(),
            materialised_causal_bias(),
            FlopCounterMode(display=False) as counter,
        ):
            fn()
        total = float(counter.get_total_flops())
    except Exception as exc:
        return None, f"FlopCounterMode failed: {type(exc).__name__}: {exc}"
    if not math.isfinite(total) or total <= 0:
        return None, f"FlopCounterMode counted {total} FLOPs"
    return total, None


def _jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG of a gradient with noise (as hard to decode as a photo, quick to make)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x % 256, y % 256, (x + y + 40 * seed) % 256], -1).astype(np.int16)
    pixels = np.clip(pixels + rng.integers(0, 24, pixels.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _median_s(fn: Callable[[], Any], repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# --------------------------------------------------------------------------- scorers
def build_scorer(
    name: str, dry_run: bool, device: str, dtype: str, tmp: str, config: Any = None
) -> tuple[Any, str]:
    """The scorer with random weights: tiny configs in a dry run, the real shapes on a GPU
    (``config``: another mPLUG-Owl2 config for the LMMs)."""
    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    torch.manual_seed(0)
    if name == "gamma":
        from vqpipe.models.gamma import GammaConfig, GammaModel
        from vqpipe.scorers.gamma import GammaScorer

        config = (
            GammaConfig(clip_model="vqpipe-demo-ViT-16", n_moae_layers=2, adapter_hidden=64)
            if dry_run
            else GammaConfig()
        )
        model = GammaModel(config).eval()
        return GammaScorer(model=model, device=device, dtype=dtype), config.clip_model

    from vqpipe.models.mplug_owl2 import MPLUGOwl2Config, MPLUGOwl2ForCausalLM
    from vqpipe.models.mplug_owl2.tiny import bench_config, train_tiny_tokenizer

    train_tiny_tokenizer(tmp)  # prompt ids only; the model's vocabulary is its own
    cfg = config or (bench_config() if dry_run else MPLUGOwl2Config())
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    model = MPLUGOwl2ForCausalLM.from_config(cfg, dtype=torch_dtype, device=device)
    cfg.save_pretrained(tmp)
    shape = "tiny (bench_config)" if dry_run else "7B (mPLUG-Owl2 shape)"
    if name == "qalign":
        from vqpipe.scorers.qalign import QAlignScorer

        return QAlignScorer(tmp, device=device, dtype=dtype, model=model), shape
    from vqpipe.scorers.anchor_sets import OFFICIAL_ANCHOR_MATRIX, AnchorSet
    from vqpipe.scorers.compare2score import Compare2ScoreScorer

    rng = np.random.default_rng(0)
    size = cfg.vision.image_size
    files = []
    for j in range(5):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            f"{tmp}/a{j}.png"
        )
        files.append(f"a{j}.png")
    table = pd.DataFrame({"file": files, "mos": np.arange(5.0), "std": np.ones(5)})
    scorer = Compare2ScoreScorer(
        tmp,
        device=device,
        dtype=dtype,
        model=model,
        anchors=AnchorSet(root=Path(tmp), table=table),
        anchor_matrix=OFFICIAL_ANCHOR_MATRIX,
    )
    return scorer, shape


def scorer_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image

    from vqpipe.media.decode import decode_image
    from vqpipe.pipeline.stages import _from_bytes, _to_bytes

    device = "cpu" if args.dry_run else "cuda"
    dtype = "fp32" if args.dry_run else "bf16"
    batch = BATCH[name][0 if args.dry_run else 1]
    loop_s = 1.0 if args.dry_run else LOOP_S[name]
    with tempfile.TemporaryDirectory(prefix=f"gpu-suite-{name}-") as tmp:
        built = time.perf_counter()
        scorer, shape = build_scorer(name, args.dry_run, device, dtype, tmp)
        build_s = time.perf_counter() - built
    dev = scorer.device
    to_device = getattr(scorer, "pixels_to_input", None) or scorer.to_input
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    pixels = np.asarray(scorer.preprocess(image)["pixels"])
    frame = pixels.reshape(-1, *pixels.shape[-3:])  # one image: [T = 1, 3, S, S]
    blobs = [_to_bytes(frame) for _ in range(batch)]  # as the decode workers send them
    batch_pixels = np.stack([frame[0]] * batch)
    out: dict[str, Any] = {
        "scorer": name,
        "model": shape,
        "device": str(dev),
        "dtype": dtype,
        "batch": batch,
        "input_pixels": list(frame.shape[-3:]),
        "build_s": round(build_s, 1),
    }

    # host path: the actor's ScoreStage → predict_items → to the device, per image
    def host_path() -> None:
        inputs = [_from_bytes(b) for b in blobs]
        frames = [f for x in inputs for f in x]
        to_device(np.stack(frames))
        sync(dev)

    host_s = _median_s(host_path, 3 if args.dry_run else 10)
    out["host_path_ms_per_image"] = round(1e3 * host_s / batch, 4)
    out["host_path"] = "np.load(.npy bytes) + np.stack + pin_memory + .to(device) + normalise"

    # the tensor column path (issue 26): the rows' frames (views of the column) stacked once
    # into a reused pinned buffer, copied on the copy stream, normalised
    from vqpipe.scorers.transfer import StagingBuffers

    buffers = StagingBuffers(pinned=dev.type == "cuda")
    rows = [frame] * batch

    def tensor_path() -> None:
        staged = buffers.stage(rows)
        pixels = staged.to_device(dev)
        if staged.event is not None:
            staged.ready_on(pixels)
        to_device(pixels)
        sync(dev)
        staged.release()

    new_s = _median_s(tensor_path, 3 if args.dry_run else 10)
    out["tensor_path_ms_per_image"] = round(1e3 * new_s / batch, 4)
    out["host_path_ratio"] = round(host_s / new_s, 1)

    # images/s of predict_items on a full batch, GPU busy % sampled over the timed loop
    items = list(batch_pixels[:, None])  # [T = 1, 3, S, S] each, as the actor gets them

    def predict() -> None:
        scorer.predict_items(items, batch)

    for _ in range(1 if args.dry_run else 2):  # warm-up: prefix caches, kernels, allocator
        predict()
    sync(dev)
    min_iters = 2 if args.dry_run else 3
    with UtilisationSampler() as sampler:
        started = time.perf_counter()
        iters = 0
        while iters < min_iters or time.perf_counter() - started < loop_s:
            predict()
            iters += 1
        sync(dev)
        seconds = time.perf_counter() - started
    ips = batch * iters / seconds
    out.update({"images_per_s": round(ips, 3), "timed_iters": iters, "timed_s": round(seconds, 2)})
    busy = sampler.summary(since=started)
    out["gpu_busy_pct"] = busy.pop("busy_pct")
    out["gpu_busy"] = busy

    # FLOPs of the same call on the same batch, outside inference mode
    flops, error = count_flops(predict, scorer.model)
    peak, peak_source = peak_flops(dev, args.peak_tflops)
    out["peak_flops"] = peak
    out["peak_source"] = peak_source
    if error is not None:
        out["flops_per_image"] = out["mfu"] = None
        out["flops_error"] = error
    else:
        out["flops_per_image"] = flops / batch
        out["gflops_per_image"] = round(flops / batch / 1e9, 4)
        out["tflops_per_s"] = round(ips * flops / batch / 1e12, 4)
        out["mfu"] = ips * flops / batch / peak

    # decode + this scorer's preprocessing on one core
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode: dict[str, Any] = {}
    for label, (w, h), reps in (
        ("1mp", (1152, 864), 3 if args.dry_run else 20),
        ("12mp", (4000, 3000), 1 if args.dry_run else 4),
    ):
        data = _jpeg(w, h)
        warm = not args.dry_run
        decode_only = _median_s(lambda d=data: decode_image(d), reps, warm)
        both = _median_s(lambda d=data: scorer.preprocess(decode_image(d)[0]), reps, warm)
        decode[label] = {
            "pixels": [w, h],
            "jpeg_bytes": len(data),
            "decode_images_per_s_per_core": round(1 / decode_only, 2),
            "decode_preprocess_images_per_s_per_core": round(1 / both, 2),
        }
    torch.set_num_threads(threads)
    out["decode_per_core"] = decode
    if error is not None:
        out["error"] = error
    return out


# --------------------------------------------------------------------------- job
def job_section(args: argparse.Namespace) -> dict[str, Any]:
    """A ``vqpipe score`` job, Gamma in one GPU actor, over ``--job-images`` synthetic JPEGs;
    the steady scoring rate after the first committed part, and GPU busy % over that phase."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    from vqpipe.models.gamma import GammaConfig, GammaModel
    from vqpipe.models.gamma_checkpoint import save_gamma
    from vqpipe.pipeline.config import JobConfig, ScorerOptions
    from vqpipe.pipeline.job import run_job

    n = args.job_images or (96 if args.dry_run else 30000)
    side = args.job_image_size or (64 if args.dry_run else 256)
    batch = 8 if args.dry_run else 256
    rows_per_file = args.job_rows_per_file or (16 if args.dry_run else 1024)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-job-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        distinct = [_jpeg(side, side, seed) for seed in range(32)]
        for i in range(n):  # copies of 32 JPEGs: each is decoded as if it were new
            (corpus / f"{i:06d}.jpg").write_bytes(distinct[i % len(distinct)])
        config = (
            GammaConfig(clip_model="vqpipe-demo-ViT-16", n_moae_layers=2, adapter_hidden=64)
            if args.dry_run
            else GammaConfig()
        )
        checkpoint = save_gamma(GammaModel(config), Path(tmp) / "gamma-random.safetensors")
        options: dict[str, Any] = {"checkpoint": str(checkpoint)}
        if args.dry_run:
            options["device"] = "cpu"
        spec = ScorerOptions(
            "gamma", options, batch_size=batch, num_gpus=0.0 if args.dry_run else 1.0
        )
        job = JobConfig(
            input=str(corpus),
            output=str(Path(tmp) / "quality"),
            scorers=[spec],
            rows_per_file=rows_per_file,
        )
        updates: list[tuple[float, dict[str, Any]]] = []
        with UtilisationSampler() as sampler:
            started = time.perf_counter()
            summary = run_job(
                job,
                progress=lambda p: updates.append((time.perf_counter(), dict(p))),
                progress_every_s=1.0,
            )
            wall = time.perf_counter() - started
        job_record = json.loads((Path(tmp) / "quality" / "_job.json").read_text())
    committed = [(t, p["done"]) for t, p in updates if p["done"] > 0]
    first = committed[0][0] if committed else None
    final = updates[-1][1] if updates else {}
    steady = final.get("scoring_items_per_s")
    if steady is None and len(committed) > 1 and committed[-1][0] > committed[0][0]:
        # a short job ends inside the meter's warm-up: the same quantity from the first and
        # the last progress update (rows committed after the first part / seconds since it)
        (t0, done0), (t1, done1) = committed[0], committed[-1]
        steady = round((done1 - done0) / (t1 - t0), 2)
    busy = sampler.summary(since=first)
    out: dict[str, Any] = {
        "scorer": f"gamma {config.clip_model}",
        "images": n,
        "image_pixels": [side, side],
        "batch": batch,
        "rows_per_file": rows_per_file,
        "scored_rows": summary.get("scored_rows"),
        "errors": summary.get("errors"),
        "wall_s": round(wall, 2),
        "startup_s": round(first - started, 2) if first is not None else None,
        "images_per_s_overall": summary.get("items_per_s"),
        "steady_images_per_s": steady,
        "steady": "rows committed after the first part / seconds since it (job_progress)",
        "gpu_busy_pct": busy.pop("busy_pct"),
        "gpu_busy": busy,
        "runtime": job_record["scorers"]["gamma"]["runtime"],
    }
    if steady is None:
        out["error"] = (
            f"no steady rate: {len(updates)} progress updates; more images or smaller parts"
        )
    elif summary.get("errors"):
        out["error"] = f"{summary['errors']} rows failed"
    return out


# --------------------------------------------------------------------------- the suite
def problems(report: dict[str, Any]) -> list[str]:
    """What makes the run a failure: a section's error, or a number that must be finite."""
    found = []
    for name, section in report["sections"].items():
        if "error" in section:
            found.append(f"{name}: {str(section['error'])[:300]}")
            continue
        required = ["steady_images_per_s"] if name == "job" else [
            "images_per_s", "flops_per_image", "mfu", "host_path_ms_per_image"
        ]  # fmt: skip
        if name != "job":
            for size in ("1mp", "12mp"):
                found += [
                    f"{name}: decode_per_core.{size}.{k} not finite"
                    for k, v in section["decode_per_core"][size].items()
                    if k.endswith("per_core") and not _positive(v)
                ]
        if not report["dry_run"]:
            required.append("gpu_busy_pct")
        found += [
            f"{name}: {k} = {section.get(k)!r}" for k in required if not _positive(section.get(k))
        ]
    return found


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or "gpu_suite_out",
        help="folder for gpu_suite.json (default: $OUT, else ./gpu_suite_out)",
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="whole suite (8 min)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny configs: checks it runs")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    parser.add_argument("--job-images", type=int, default=None, help="GPU 30,000; dry run 96")
    parser.add_argument("--job-image-size", type=int, default=None, help="side in pixels")
    parser.add_argument("--job-rows-per-file", type=int, default=None)
    parser.add_argument(
        "--only", nargs="*", choices=[*SCORERS, "job"], default=None, help="some sections"
    )
    parser.add_argument("--section", choices=[*SCORERS, "job"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:  # a child: one section, its JSON as the last line of stdout
        section = job_section(args) if args.section == "job" else scorer_section(args.section, args)
        print("\n" + json.dumps(section, default=str))
        return 0
    import torch

    has_gpu = torch.cuda.is_available()
    if not has_gpu and not args.dry_run:
        print(
            "gpu_suite: no CUDA device here; --dry-run checks the suite on a CPU", file=sys.stderr
        )
        return 2
    names = args.only or [*SCORERS, "job"]
    limits = {n: (150.0 if args.dry_run else PLAN[n] * args.budget_s) for n in names}
    print(
        f"gpu_suite plan ({'dry run, CPU' if args.dry_run else 'GPU'}, budget "
        f"{args.budget_s:.0f} s): " + ", ".join(f"{n} ≤ {limits[n]:.0f} s" for n in names),
        file=sys.stderr,
        flush=True,
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "gpu_suite.json"
    report: dict[str, Any] = {
        "suite": "gpu_suite",
        "dry_run": args.dry_run,
        "machine": torch.cuda.get_device_name(0) if has_gpu else platform.processor() or "cpu",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "plan_s": limits,
        "sections": {},
    }

    def save() -> None:
        out.write_text(json.dumps(report, indent=2, default=str))

    began = time.perf_counter()
    passthrough = ["--dry-run"] if args.dry_run else []
    for flag in ("peak_tflops", "job_images", "job_image_size", "job_rows_per_file"):
        if getattr(args, flag) is not None:
            passthrough += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for name in names:
        left = args.budget_s - (time.perf_counter() - began)
        timeout = limits[name] if args.dry_run else max(30.0, min(limits[name], left - 5))
        print(f"gpu_suite: {name} (≤ {timeout:.0f} s) ...", file=sys.stderr, flush=True)
        report["sections"][name] = _child(name, passthrough, timeout)
        save()
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["problems"] = problems(report)
    save()
    for name, s in report["sections"].items():
        print(f"  {name}: " + _line(s), file=sys.stderr)
    failed = report["problems"]
    print(f"gpu_suite: wrote {out} in {report['seconds']} s; problems: {failed or 'none'}")
    return 1 if failed else 0


def _child(name: str, flags: list[str], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, *flags]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=HERE.parent
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    seconds = round(time.perf_counter() - started, 1)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"seconds": seconds, "error": done.stderr.strip()[-2000:] or f"rc {done.returncode}"}
    try:
        section = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"seconds": seconds, "error": "no JSON", "stdout": done.stdout[-2000:]}
    return {"seconds": seconds, **section}


def _line(s: dict[str, Any]) -> str:
    if "error" in s and "images_per_s" not in s and "steady_images_per_s" not in s:
        return f"FAILED: {str(s['error'])[:200]}"
    if "steady_images_per_s" in s:
        return (
            f"{s['steady_images_per_s']} images/s steady ({s['images_per_s_overall']} overall, "
            f"start-up {s['startup_s']} s), GPU busy {s['gpu_busy_pct']}%"
        )
    mfu = "n/a" if s.get("mfu") is None else f"{s['mfu']:.2%}"
    return (
        f"{s['images_per_s']:.1f} images/s, {s.get('gflops_per_image')} GFLOP/image, MFU {mfu}, "
        f"GPU busy {s['gpu_busy_pct']}%, host path {s['host_path_ms_per_image']} ms/image, "
        f"decode+prep 1 MP {s['decode_per_core']['1mp']['decode_preprocess_images_per_s_per_core']}"
        f"/s/core, 12 MP {s['decode_per_core']['12mp']['decode_preprocess_images_per_s_per_core']}"
        "/s/core"
    )


if __name__ == "__main__":
    sys.exit(main())
