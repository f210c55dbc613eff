"""Defaults that the library, the pipeline and the CLI share, in a module that imports nothing
(so ``vqpipe --help`` can show them without loading torch)."""

DEFAULT_BATCH_SIZE = 64
"""Model inputs per forward pass (images; frames scored as images; video sequences for
video-native scorers) for a library call without ``batch_size`` and for a scorer that
:data:`DEFAULT_BATCH_SIZES` does not list."""

DEFAULT_BATCH_SIZES: dict[str, dict[str, int]] = {
    "gamma": {"cuda": 512, "cpu": 64},
    "qalign": {"cuda": 64, "cpu": 8},
    "qalign/video": {"cuda": 8, "cpu": 2},
    "compare2score": {"cuda": 16, "cpu": 4},
    "compare2score-lmm": {"cuda": 8, "cpu": 2},
}
"""A job's batch size when it sets none, per scorer (``name/task`` for a task that changes
what an input is) and device (``cuda`` when the pool asks for GPUs). Arithmetic, bf16 on an
80 GB GPU:

- Gamma (ViT-B/16, 197 tokens an image): ~1.2 MB of MLP activations an image, 512 images
  ≈ 0.6 GB beside 0.3 GB of weights; big enough to keep the GPU busy (CPU: 64, fp32).
- Q-Align (7B LLM, 13.5 GB of weights): an image is ~85 tokens of LLM and 1,025 tokens of
  ViT-L (~28 MB of activations a frame, run ``vision_chunk`` = 64 frames a call); 64 images
  ≈ 5,400 LLM tokens, ~2 GB of activations. A video is up to 31 frames = ~2,048 tokens: 8
  videos = 16k tokens (the same ~11 k-wide MLP activations ≈ 0.4 GB a layer; no mask tensor
  since batches hold one length). CPU (fp32, 27 GB of weights): 8 images, 2 videos.
- Compare2Score: m = 5 anchors a test image, so 16 images = 80 sequences of ~85 new tokens
  after the shared anchor caches (tiled, not copied: one layer's keys at a time, ~0.2 GB);
  CPU: 4.
- Compare2Score-LMM (LLaVA-style, two 576-token images a pair, m pairs an image): 8 images
  = 40 sequences of ~1,200 tokens; CPU: 2.
"""


def default_batch_size(scorer: str, device: str = "cpu", task: str | None = None) -> int:
    """:data:`DEFAULT_BATCH_SIZES` for ``scorer`` on ``device`` (``cuda``, ``cuda:1``, ``cpu``)
    and ``task`` (``qalign/video``), else :data:`DEFAULT_BATCH_SIZE`."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    table = DEFAULT_BATCH_SIZES.get(f"{scorer}/{task}") or DEFAULT_BATCH_SIZES.get(scorer, {})
    return table.get(kind, DEFAULT_BATCH_SIZE)


MAX_BYTES = 512 * 1024**2
"""Bytes per input object at most (``--max-bytes``)."""
MAX_PIXELS = 178_956_970
"""Pixels per image or video frame at most (``--max-pixels``): Pillow's own decompression-bomb
threshold (twice its warning)."""
VIDEO_FPS = 1.0
"""Frames sampled per second of video (``--video-fps``), before :data:`MAX_FRAMES` caps them."""
MAX_FRAMES = 32
"""Frames sampled per video (evenly spread when the video is longer)."""
MAX_DURATION_S = 4 * 3600.0
"""Video seconds at most (``--max-duration``)."""
READ_TIMEOUT_S = 300.0
"""Wall clock to fetch one input's bytes (``--read-timeout``)."""
DECODE_TIMEOUT_S = 120.0
"""Wall clock per video decoder try, in its subprocess (``--decode-timeout``)."""
