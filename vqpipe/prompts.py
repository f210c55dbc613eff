"""Facts of the official prompts that the scorers, the training tasks and the config checks
share, in a module that imports nothing (so ``vqpipe --help`` stays free of torch)."""

QALIGN_TASKS: dict[str, tuple[str, str]] = {
    "quality": ("quality", "image"),
    "aesthetics": ("aesthetics", "image"),
    "video": ("quality", "video"),
}
"""Q-Align task → (what is rated, what the input is called) in the official prompt."""


def qalign_question(task: str) -> str:
    """The official Q-Align question of ``task`` (quality | aesthetics | video)."""
    return "How would you rate the {} of this {}?".format(*_qalign_task(task))


def qalign_answer(task: str) -> str:
    """The official Q-Align answer up to its level word: ``"The quality of the image is"``."""
    return "The {} of the {} is".format(*_qalign_task(task))


def qalign_prompt(task: str) -> str:
    """The official OneAlign inference prompt of ``task``, its image placeholder after the
    question."""
    return f"USER: {qalign_question(task)}\n<|image|>\nASSISTANT: {qalign_answer(task)}"


def _qalign_task(task: str) -> tuple[str, str]:
    try:
        return QALIGN_TASKS[task]
    except KeyError:
        known = sorted(QALIGN_TASKS)
        raise ValueError(f"unknown Q-Align task {task!r}; use one of {known}") from None


COMPARE_QUESTION = "Compared with the first image, what is your quality rating for second image?"
"""Compare2Score's question: how the second image compares with the first (the anchor)."""
COMPARE_ANSWER = "The quality of the second image is"
"""Compare2Score's answer up to its comparison word."""
COMPARE_PROMPT = f"USER: <|image|> <|image|> {COMPARE_QUESTION} \nASSISTANT: {COMPARE_ANSWER}"
"""The official Compare2Score prompt: anchor image first, test image second."""
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
