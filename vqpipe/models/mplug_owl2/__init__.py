"""Native mPLUG-Owl2 (Q-Align / Compare2Score backbone) that loads the official checkpoints."""

from vqpipe.errors import CheckpointMismatchError
from vqpipe.models.mplug_owl2.config import (
    MPLUGOwl2Config,
    MplugOwlVisionConfig,
    MplugOwlVisualAbstractorConfig,
)
from vqpipe.models.mplug_owl2.modeling import (
    IMAGE_TOKEN_INDEX,
    MPLUGOwl2ForCausalLM,
    resolve_model_dir,
)
from vqpipe.models.mplug_owl2.processor import MPLUGOwl2ImageProcessor, expand2square
from vqpipe.models.mplug_owl2.tokenizer import IMAGE_TOKEN, PromptTokenizer

__all__ = [
    "IMAGE_TOKEN",
    "IMAGE_TOKEN_INDEX",
    "CheckpointMismatchError",
    "MPLUGOwl2Config",
    "MPLUGOwl2ForCausalLM",
    "MPLUGOwl2ImageProcessor",
    "MplugOwlVisionConfig",
    "MplugOwlVisualAbstractorConfig",
    "PromptTokenizer",
    "expand2square",
    "resolve_model_dir",
]
