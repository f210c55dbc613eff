"""Facts of the official prompts that the scorers, the training tasks and the config checks
share, in a module that imports nothing (so ``vqpipe --help`` stays free of torch)."""

QALIGN_TASKS: dict[str, tuple[str, str]] = {
    "quality": ("quality", "image"),
    "aesthetics": ("aesthetics", "image"),
    "video": ("quality", "video"),
}
"""Q-Align task → (what is rated, what the input is called) in the official prompt."""

QALIGN_QUESTION = "How would you rate the {what} of this {medium}?"
"""Q-Align's question, filled from :data:`QALIGN_TASKS`."""
COMPARE2SCORE_QUESTION = (
    "Compared with the first image, what is your quality rating for second image?"
)
"""Compare2Score's question after its two images (anchor first, test second)."""
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)
"""The vicuna_v1 system line of mPLUG-Owl2's conversations."""

# Gamma's level prompts (the model's text side lives in vqpipe.models.gamma)
PROMPT_LEVELS: tuple[str, ...] = ("bad", "poor", "fair", "good", "perfect")
BASE_PROMPTS: tuple[str, ...] = tuple(f"{level} image" for level in PROMPT_LEVELS)
"""The naive prompts of Gamma (Sec. 3.2), used with ``scene=None`` / ``"generic"``."""

SCENES: dict[str, tuple[str, str]] = {
    "natural-quality": ("natural", "quality"),
    "ai-generated-quality": ("AI-generated", "quality"),
    "face-quality": ("face", "quality"),
    "underwater-quality": ("underwater", "quality"),
    "natural-aesthetics": ("natural", "aesthetics"),
}
"""Scene-based differential prompts (paper Appendix A.4): ``"{scene} {level}-{kind} image"``."""


def scene_prompts(scene: str | None) -> tuple[str, ...]:
    """The five level prompts of ``scene`` (``None`` or ``"generic"``: the naive prompts)."""
    if scene is None or scene == "generic":
        return BASE_PROMPTS
    try:
        where, kind = SCENES[scene]
    except KeyError:
        known = ", ".join(["generic", *SCENES])
        raise ValueError(f"unknown Gamma scene {scene!r}; choose one of: {known}") from None
    return tuple(f"{where} {level}-{kind} image" for level in PROMPT_LEVELS)
