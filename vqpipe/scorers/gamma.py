"""The Gamma scorer: fused, batched CLIP+MoAE inference with cached scene-prompt features."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vqpipe.defaults import DEFAULT_BATCH_SIZE
from vqpipe.io.checkpoints import checkpoint_identity, read_safetensors_metadata
from vqpipe.media.image import (
    REDUCING_GAP,
    check_exact,
    draft_for,
    is_extreme,
    resize_crop_bounded,
    resized_size,
    to_rgb,
)
from vqpipe.prompts import PROMPT_LEVELS, scene_prompts
from vqpipe.scorers.base import Scorer
from vqpipe.scorers.chunked import ChunkedCall, compile_model
from vqpipe.scorers.transfer import device_input

if TYPE_CHECKING:  # torch, open_clip and torchvision load where a model is built or run
    import torch

    from vqpipe.models.gamma import GammaModel


class GammaPreprocessor:
    """CPU half of the scorer: PIL image → uint8 [3, S, S], open_clip's eval geometry
    (shortest side → S, bicubic, centre crop). Picklable, no model needed.

    ``exact_preprocessing=False`` (the scorer's default): the pipeline decodes JPEGs at ≥ 2S on
    the short side (``draft``) and the resize first box-reduces larger inputs to ≥ 2S (Pillow's
    ``reducing_gap``); within ~1/255 on average of the exact path, 4-6× faster on 12 MP photos.
    """

    def __init__(self, image_size: int, exact_preprocessing: bool = True) -> None:
        from torchvision.transforms import CenterCrop, InterpolationMode, Resize

        self.image_size = int(image_size)
        self.exact = check_exact(exact_preprocessing)
        self.draft = draft_for(self.exact, self.image_size, "short")
        self._resize = Resize(self.image_size, interpolation=InterpolationMode.BICUBIC)
        self._crop = CenterCrop(self.image_size)

    def __call__(self, item: Image.Image) -> dict[str, np.ndarray]:
        image = to_rgb(item)
        if is_extreme(*image.size):  # a thin strip: crop before resizing (bounded memory)
            image = resize_crop_bounded(image, self.image_size, Image.Resampling.BICUBIC)
        elif self.exact:
            image = self._crop(self._resize(image))
        else:  # torchvision's Resize geometry, with Pillow's reducing_gap
            size = resized_size(*image.size, self.image_size)
            resample = Image.Resampling.BICUBIC
            image = self._crop(image.resize(size, resample, reducing_gap=REDUCING_GAP))
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        return {"pixels": np.ascontiguousarray(pixels)}

    def device_geometry(self, image: torch.Tensor) -> torch.Tensor:
        """The same geometry for a decoded uint8 [3, H, W] tensor, on its device
        (``decode=gpu``): the exact path's within 1-2 levels of 255, no draft or reducing gap
        (``tests/test_device_decode.py``). The pipeline sends no extreme aspect ratios here
        (the CPU bounds those)."""
        from vqpipe.media.device_decode import resize_crop

        return resize_crop(image, self.image_size)


def checkpoint_image_size(
    checkpoint: str | os.PathLike | None, storage_options: dict[str, Any] | None = None
) -> int:
    """Input size of a Gamma checkpoint without loading it: the config stored in our
    safetensors header (read over fsspec), else ViT-B/16's 224."""
    from vqpipe.models.gamma import GammaConfig, clip_image_size  # registers our CLIP configs
    from vqpipe.models.gamma_checkpoint import CONFIG_METADATA_KEY

    source = os.fspath(checkpoint) if checkpoint is not None else str(demo_checkpoint())
    config = GammaConfig()
    if source.endswith(".safetensors"):
        stored = read_safetensors_metadata(source, storage_options).get(CONFIG_METADATA_KEY)
        if stored:
            config = GammaConfig.from_dict(json.loads(stored))
    return clip_image_size(config.clip_model)


def half_weights(model: GammaModel, dtype: torch.dtype) -> GammaModel:
    """Hold the vision tower's matmul weights (Linear, Conv2d, attention in-projections) in
    ``dtype`` (bf16 / fp16), in place: most of its memory, and exactly what autocast casts
    them to on every call, so scores stay those of float32 weights under autocast. Norms,
    embeddings, the head (float32: 2⁻⁹ steps in bf16 would move ``exp(logit_scale)`` ≈ 100
    by ~1 %) and the text tower (run once per scene, cached) stay float32; a text tower in
    bf16 would also switch open_clip's text residual stream to bf16."""
    import torch
    from torch import nn

    for module in model.clip_model.visual.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.to(dtype)
        for name in ("in_proj_weight", "in_proj_bias"):
            param = getattr(module, name, None)
            if isinstance(param, torch.nn.Parameter):
                param.data = param.data.to(dtype)
    return model


def demo_checkpoint() -> Path:
    """The bundled demo checkpoint (a small CLIP+MoAE trained on synthetic data)."""
    return Path(str(resources.files("vqpipe") / "assets" / "gamma-demo.safetensors"))


def warn_if_demo(source: str | os.PathLike) -> None:
    """A :class:`~vqpipe.errors.DemoCheckpointWarning` when ``source`` is the bundled demo
    checkpoint (the CLI says so on its console; a library user gets the warning)."""
    import warnings

    from vqpipe.errors import DemoCheckpointWarning

    if os.path.abspath(os.fspath(source)) == os.path.abspath(demo_checkpoint()):
        warnings.warn(
            "scoring with the bundled demo gamma checkpoint, trained on synthetic data only: "
            "pass checkpoint= a trained one for real images",
            DemoCheckpointWarning,
            stacklevel=4,
        )


class GammaScorer(Scorer):
    """Gamma image assessment; ``score`` = Σ softmax(level logits) · score_level (≈ 0.2..1).

    Options: ``scene`` (default prompts for every item; ``score_details(items, scene=[...])``
    sets them per item), ``compile`` (``torch.compile`` the vision tower, at one fixed batch
    shape: the first batch's, later shorter ones padded; a string names the mode, e.g.
    ``"reduce-overhead"``), ``fused_experts`` (MoAE
    experts as two wide matmuls instead of a loop), ``storage_options`` for fsspec URIs,
    ``exact_preprocessing`` (default False: downscale-on-decode, see :class:`GammaPreprocessor`;
    True: open_clip's transform bit for bit). ``checkpoint=None`` loads the bundled demo
    checkpoint. On CUDA with a half dtype (bf16 by default) the weights are held in that dtype
    (:func:`half_weights`) and the forward runs under autocast.
    """

    name = "gamma"
    version = "1"
    media = frozenset({"image"})
    score_range = (0.0, 1.0)
    prob_labels = PROMPT_LEVELS

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        scene: str | None = "natural-quality",
        compile: bool | str = False,
        fused_experts: bool = False,
        storage_options: dict[str, Any] | None = None,
        model: GammaModel | None = None,
        exact_preprocessing: bool = False,
    ) -> None:
        import torch

        from vqpipe.models.gamma import MoAEMLP
        from vqpipe.models.gamma_checkpoint import load_gamma

        super().__init__(None if checkpoint is None else os.fspath(checkpoint), device, dtype)
        scene_prompts(scene)  # validates the scene name early
        self.scene = scene
        self.storage_options = storage_options
        if model is None:
            source = checkpoint if checkpoint is not None else demo_checkpoint()
            warn_if_demo(source)
            model, _ = load_gamma(source, storage_options=storage_options)
            self.checkpoint = os.fspath(source)
            self.checkpoint_fingerprint = checkpoint_identity(source, storage_options)
        self.model = model.eval().to(self.device)
        for module in self.model.modules():
            if isinstance(module, MoAEMLP):
                module.fused = fused_experts
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            if self.autocast_dtype is not None:  # half the weight memory, no per-call casts
                half_weights(self.model, self.autocast_dtype)
        self.image_size = self.model.image_size
        # Same geometry as open_clip's eval transform: shortest side → size (bicubic), centre crop.
        self.preprocessor = GammaPreprocessor(self.image_size, exact_preprocessing)
        # compile: the vision tower at one batch shape (the last partial batch padded, its
        # outputs sliced); the head stays eager (scene prompts are tokenised on first use).
        self.compile = compile
        self._vision = ChunkedCall(
            compile_model(self.model.image_features, compile), fixed=bool(compile)
        )

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return self.dtype if self.dtype in (torch.bfloat16, torch.float16) else None

    @classmethod
    def default_checkpoint(cls) -> Path:
        return demo_checkpoint()

    @classmethod
    def bundled_checkpoint(cls) -> Path:
        return demo_checkpoint()

    @classmethod
    def check_options(
        cls, scene: str | None = "natural-quality", exact_preprocessing: bool = False, **_: Any
    ) -> None:
        scene_prompts(scene)
        check_exact(exact_preprocessing)

    @classmethod
    def make_preprocessor(
        cls,
        checkpoint: str | os.PathLike | None = None,
        storage_options: dict[str, Any] | None = None,
        exact_preprocessing: bool = False,
        **_: Any,
    ) -> GammaPreprocessor:
        """The CPU preprocessing for ``checkpoint``, without loading the model."""
        size = checkpoint_image_size(checkpoint, storage_options)
        return GammaPreprocessor(size, exact_preprocessing)

    def pixels_to_input(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] → normalised float input on the scorer's device."""
        import torch

        x = self.model.normalize(device_input(pixels, self.device))
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: v.cpu().numpy() for key, v in self.predict_tensors(batch).items()}

    def predict_tensors(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """:meth:`predict`'s outputs on the device (float32), not yet copied to the host."""
        import torch

        x = self.pixels_to_input(batch["pixels"])
        scenes = batch.get("scene")
        scenes = self.scene if scenes is None else [str(s) for s in scenes]
        amp = self.autocast_dtype
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            out = self.model.head(self._vision(x), scenes)
        return {"score": out["score"].float(), "probs": out["probs"].float()}

    def predict_items(
        self,
        inputs: Sequence[np.ndarray],
        batch_size: int = DEFAULT_BATCH_SIZE,
        scene: str | Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Scores and level probabilities, a video's the mean over its frames; ``scene``
        overrides the scorer's (one for every item, or one per item)."""
        if scene is None:
            return self.frames_averaged(inputs, batch_size)
        scenes = [scene] * len(inputs) if isinstance(scene, str) else list(scene)
        if len(scenes) != len(inputs):
            raise ValueError(f"got {len(scenes)} scenes for {len(inputs)} items")
        for s in set(scenes):
            scene_prompts(s)
        per_frame = np.repeat(np.asarray(scenes), [len(x) for x in inputs])
        return self.frames_averaged(inputs, batch_size, {"scene": per_frame})

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "scene": self.scene, "image_size": self.image_size}
