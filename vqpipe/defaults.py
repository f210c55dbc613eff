"""Defaults that the library, the pipeline and the CLI share, in a module that imports nothing
(so ``vqpipe --help`` can show them without loading torch)."""

DEFAULT_BATCH_SIZE = 64
"""Model inputs per forward pass (images; frames scored as images; video sequences for
video-native scorers) unless a job or caller says otherwise: the one default."""

MAX_BYTES = 512 * 1024**2
"""Bytes per input object at most (``--max-bytes``)."""
MAX_PIXELS = 178_956_970
"""Pixels per image or video frame at most (``--max-pixels``): Pillow's own decompression-bomb
threshold (twice its warning)."""
MAX_FRAMES = 32
"""Frames sampled per video (evenly spread when the video is longer)."""
MAX_DURATION_S = 4 * 3600.0
"""Video seconds at most (``--max-duration``)."""
READ_TIMEOUT_S = 300.0
"""Wall clock to fetch one input's bytes (``--read-timeout``)."""
DECODE_TIMEOUT_S = 120.0
"""Wall clock per video decoder try, in its subprocess (``--decode-timeout``)."""
