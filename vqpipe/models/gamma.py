"""Gamma: CLIP with a Mixture of Assessment Experts (MoAE) in both towers, and a level head.

Reference: Zhou et al., "Gamma: Toward Generic Image Assessment with Mixture of Assessment
Experts" (2025); official code zht8506/Assess-Any-Image. The module tree mirrors the official
checkpoint keys (``clip_model.*`` in OpenAI-CLIP names, ``mlp.useful_experts`` / ``mlp.experts.
expert_k`` / ``mlp.gating.layer1`` / ``mlp.scale`` in MoAE blocks, ``adapter.fc.{0,2}``,
``score_level``), so ``load_state_dict(strict=True)`` is the loader.

Forward (images in [0, 1] after CLIP normalisation)::

    f = encode_image(x);  f = f + adapter(f);  f̂ = f / ‖f‖          # [B, D]
    t̂ = normalised text features of the five level prompts of a scene  # [5, D], cached
    p = softmax(exp(logit_scale) · f̂ t̂ᵀ);  score = p · score_level      # [B, 5] → [B]
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from vqpipe.prompts import BASE_PROMPTS, PROMPT_LEVELS, SCENES, scene_prompts  # noqa: F401

CONFIG_DIR = Path(__file__).with_name("clip_configs")
open_clip.add_model_config(CONFIG_DIR)  # our reduced configs (the bundled demo model)

DATASET_SCENES: dict[str, str] = {
    **dict.fromkeys(
        ["live", "csiq", "tid", "kadid", "koniq", "spaq", "synthetic"], "natural-quality"
    ),
    "agiqa": "ai-generated-quality",
    "gfiqa": "face-quality",
    "uwiqa": "underwater-quality",
    "ava": "natural-aesthetics",
    "aadb": "natural-aesthetics",
}
"""Which scene prompts each dataset trains and tests with (Gamma's grouping), by name prefix."""

INITIAL_SCORE_LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)


def clip_image_size(clip_model: str) -> int:
    """Side of the square input of the open_clip model config ``clip_model`` (ours included),
    without building it; 224 where the config names none (open_clip's default)."""
    vision = (open_clip.get_model_config(clip_model) or {}).get("vision_cfg", {})
    return _side(vision.get("image_size", 224))


def _side(size: int | Sequence[int]) -> int:
    """open_clip gives an image size as an int or as (height, width) of a square."""
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def scene_for_dataset(dataset: str) -> str:
    """Scene of a dataset name ("KonIQ-10k" → natural-quality); unknown names → natural-quality."""
    key = "".join(ch for ch in dataset.lower() if ch.isalnum())
    for prefix, scene in DATASET_SCENES.items():
        if key.startswith(prefix):
            return scene
    return "natural-quality"


@dataclass
class GammaConfig:
    """Everything needed to rebuild a Gamma model (stored in our checkpoints' metadata)."""

    clip_model: str = "ViT-B-16"
    force_quick_gelu: bool = True  # UniQA / OpenAI CLIP weights use QuickGELU
    n_moae_layers: int = 6
    n_experts: int = 3
    adapter_hidden: int = 256

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GammaConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown GammaConfig field(s): {sorted(unknown)}")
        return cls(**data)


class _Gate(nn.Module):
    """Token-wise router; the attribute name ``layer1`` matches the official checkpoints."""

    def __init__(self, width: int, n_experts: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(width, n_experts)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.layer1(h), dim=-1)


class MoAEMLP(nn.Module):
    """``out = shared(h) + λ · Σ_k softmax(router(h))_k · expert_k(h)``, per token.

    ``shared`` (``useful_experts``) is the block's original MLP, frozen; the experts start as
    copies of it; λ (``scale``) starts at 0, so the block is exactly the plain CLIP block.
    ``fused=True`` runs all experts as two wide matmuls (weights concatenated along the hidden
    axis, the gates folded in before the second projection) instead of a loop over experts.
    The loop is the default: on CPU it measured faster (benchmarks/gamma_throughput.py:
    fused 0.74x on the demo config, 0.98x on ViT-B/16); GPUs are still to be measured.
    """

    def __init__(self, mlp: nn.Sequential, n_experts: int = 3, fused: bool = False) -> None:
        super().__init__()
        width = mlp.c_fc.in_features
        self.useful_experts = mlp
        for p in self.useful_experts.parameters():
            p.requires_grad_(False)
        self.experts = nn.ModuleDict({f"expert_{k}": copy.deepcopy(mlp) for k in range(n_experts)})
        for p in self.experts.parameters():
            p.requires_grad_(True)
        self.gating = _Gate(width, n_experts)
        self.scale = nn.Parameter(torch.zeros(()))
        self.fused = fused

    @property
    def c_fc(self) -> nn.Linear:
        """open_clip reads ``block.mlp.c_fc`` to find the weight dtype."""
        return self.useful_experts.c_fc

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shared = self.useful_experts(h)
        gates = self.gating(h)  # [..., K]
        mix = self._mix_fused(h, gates) if self.fused else self._mix_loop(h, gates)
        return shared + self.scale * mix

    def _mix_loop(self, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(h)
        for k, expert in enumerate(self.experts.values()):
            out = out + gates[..., k : k + 1] * expert(h)
        return out

    def _mix_fused(self, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        experts = list(self.experts.values())
        n, hidden = len(experts), experts[0].c_fc.out_features
        w_fc = torch.cat([e.c_fc.weight for e in experts])  # [K·H, W]
        b_fc = torch.cat([e.c_fc.bias for e in experts])  # [K·H]
        act = experts[0].gelu(F.linear(h, w_fc, b_fc))  # [..., K·H]
        act = (act.unflatten(-1, (n, hidden)) * gates.unsqueeze(-1).to(act.dtype)).flatten(-2)
        w_proj = torch.cat([e.c_proj.weight for e in experts], dim=1)  # [W, K·H]
        b_proj = torch.stack([e.c_proj.bias for e in experts])  # [K, W]
        return F.linear(act, w_proj) + gates.to(act.dtype) @ b_proj.to(act.dtype)  # [..., W]


def _text_blocks(clip: nn.Module) -> nn.ModuleList:
    return clip.transformer.resblocks


def _vision_blocks(clip: nn.Module) -> nn.ModuleList:
    return clip.visual.transformer.resblocks


def add_moae(clip: nn.Module, n_layers: int, n_experts: int) -> None:
    """Replace the MLP of the last ``n_layers`` blocks of both towers by :class:`MoAEMLP`."""
    for blocks in (_vision_blocks(clip), _text_blocks(clip)):
        if not 0 <= n_layers <= len(blocks):
            raise ValueError(f"n_moae_layers={n_layers} but the tower has {len(blocks)} blocks")
        for block in list(blocks)[len(blocks) - n_layers :]:
            block.mlp = MoAEMLP(block.mlp, n_experts)


class Adapter(nn.Module):
    """Two bias-free FC layers with ReLU after each (``adapter.fc.{0,2}`` in checkpoints)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(inplace=False),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(inplace=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class GammaModel(nn.Module):
    """open_clip CLIP + MoAE in both towers + adapter + learnable level weights."""

    def __init__(self, config: GammaConfig | None = None, clip: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config or GammaConfig()
        if clip is None:
            clip = create_clip(self.config)
        self.clip_model = clip
        add_moae(self.clip_model, self.config.n_moae_layers, self.config.n_experts)
        embed_dim = int(self.clip_model.text_projection.shape[1])
        self.adapter = Adapter(embed_dim, self.config.adapter_hidden)
        self.score_level = nn.Parameter(torch.tensor(INITIAL_SCORE_LEVELS))
        self.tokenizer = open_clip.get_tokenizer(self.config.clip_model)
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}
        cfg = getattr(self.clip_model.visual, "preprocess_cfg", {}) or {}
        # Non-persistent: they follow .to(device) but stay out of the checkpoint keys.
        mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    # ---- parameters -----------------------------------------------------------------------
    def trainable_parameter_names(self, train_backbone: bool = False) -> list[str]:
        """Gamma's recipe: experts, routers, λ, adapter and level weights; everything when
        ``train_backbone`` (training from scratch, as the bundled demo model was)."""
        names = []
        for name, _ in self.named_parameters():
            head = name.startswith(("adapter.", "score_level"))
            moae = ".mlp.experts." in name or ".mlp.gating." in name or name.endswith(".mlp.scale")
            if head or moae or train_backbone:
                names.append(name)
        return names

    def set_trainable(self, train_backbone: bool = False) -> list[str]:
        """Freeze everything but :meth:`trainable_parameter_names`; returns those names."""
        wanted = set(self.trainable_parameter_names(train_backbone))
        for name, p in self.named_parameters():
            p.requires_grad_(name in wanted)
        return sorted(wanted)

    @property
    def image_size(self) -> int:
        """Side of the square input the vision tower expects."""
        return _side(self.clip_model.visual.image_size)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] (on the model's device) → float input with the CLIP mean/std of
        this model's preprocessing; the scorer and the training loop both use it."""
        return (pixels.float() / 255.0 - self.pixel_mean) / self.pixel_std

    # ---- towers ---------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features with the adapter residual: [B, 3, H, W] → [B, D]."""
        f = self.clip_model.encode_image(images)  # [B, D]
        f = f + self.adapter(f)
        return F.normalize(f, dim=-1)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text features of ``prompts`` (no cache): [len(prompts), D]."""
        device = self.score_level.device
        tokens = self.tokenizer(list(prompts)).to(device)
        return F.normalize(self.clip_model.encode_text(tokens), dim=-1)

    def text_features(self, scene: str | None = "natural-quality") -> torch.Tensor:
        """Level-prompt features of a scene: [5, D]. Cached while the text tower cannot change
        (eval mode or no grad); the cache is cleared by ``train()`` and ``load_state_dict``."""
        prompts = scene_prompts(scene)
        if self.training and torch.is_grad_enabled():
            return self.encode_prompts(prompts)
        cached = self._text_cache.get(prompts)
        if cached is None or cached.device != self.score_level.device:
            with torch.no_grad():
                cached = self.encode_prompts(prompts).float()
            self._text_cache[prompts] = cached
        return cached

    def train(self, mode: bool = True) -> GammaModel:
        self._text_cache.clear()
        return super().train(mode)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._text_cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- head -----------------------------------------------------------------------------
    def forward(
        self, images: torch.Tensor, scenes: str | Sequence[str | None] | None = "natural-quality"
    ) -> dict[str, torch.Tensor]:
        """Scores for a batch; ``scenes`` is one scene for all images or one per image.

        The head runs in float32 even under autocast: cosines in bf16 (2⁻⁹ steps) times the
        logit scale (100) would move the logits by ~0.2 and the score by ~0.002."""
        return self.head(self.image_features(images), scenes)

    def head(
        self, feats: torch.Tensor, scenes: str | Sequence[str | None] | None = "natural-quality"
    ) -> dict[str, torch.Tensor]:
        """Scores from image features [B, D] (:meth:`image_features`), in float32."""
        index = None
        if scenes is None or isinstance(scenes, str):
            text = self.text_features(scenes)  # [5, D]
        else:
            if len(scenes) != len(feats):
                raise ValueError(f"got {len(scenes)} scenes for {len(feats)} images")
            unique = list(dict.fromkeys(scenes))
            text = torch.stack([self.text_features(s) for s in unique])  # [U, 5, D]
            index = torch.tensor([unique.index(s) for s in scenes], device=feats.device)
        with torch.autocast(feats.device.type, enabled=False):
            feats, text = feats.float(), text.float()
            if index is None:
                cos = feats @ text.T  # [B, 5]
            else:
                cos = torch.einsum("bd,bkd->bk", feats, text[index])  # [B, 5]
            logits = self.clip_model.logit_scale.float().exp() * cos
            probs = torch.softmax(logits, dim=-1)
            return {"score": probs @ self.score_level.float(), "probs": probs, "logits": logits}


def create_clip(config: GammaConfig) -> nn.Module:
    """A randomly initialised open_clip CLIP for ``config.clip_model``."""
    if open_clip.get_model_config(config.clip_model) is None:
        raise ValueError(
            f"unknown open_clip model config {config.clip_model!r} "
            f"(see open_clip.list_models(); ours live in {CONFIG_DIR})"
        )
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights": we load our own
    try:
        return open_clip.create_model(
            config.clip_model, pretrained=None, force_quick_gelu=config.force_quick_gelu
        )
    finally:
        root.setLevel(level)
