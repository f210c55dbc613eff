"""Facts of the official prompts that the scorers, the training tasks and the config checks
share, in a module that imports nothing (so ``vqpipe --help`` stays free of torch)."""

QALIGN_TASKS: dict[str, tuple[str, str]] = {
    "quality": ("quality", "image"),
    "aesthetics": ("aesthetics", "image"),
    "video": ("quality", "video"),
}
"""Q-Align task → (what is rated, what the input is called) in the official prompt."""
