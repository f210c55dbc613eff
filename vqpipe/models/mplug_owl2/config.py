"""mPLUG-Owl2 configuration with the official ``config.json`` field names.

The official checkpoints (Q-Align / OneAlign / Compare2Score) store a LLaMA config at the top
level and the visual parts under ``visual_config = {"visual_model": {...},
"visual_abstractor": {...}}``. Fields we do not use are kept, so a config read and written
back is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

_C = TypeVar("_C", bound="_ConfigBase")
_T = TypeVar("_T")


def accepts_extra_fields(cls: type[_T]) -> type[_T]:
    """Let a config dataclass take unknown keyword arguments (like ``transformers`` configs):
    they are kept in ``extra`` and written back by ``to_dict``."""
    init = cls.__init__
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def init_with_extra(self: Any, *args: Any, **kwargs: Any) -> None:
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        init(self, *args, **kwargs)
        self.extra.update(extra)

    init_with_extra.__name__ = "__init__"
    cls.__init__ = init_with_extra  # type: ignore[method-assign]
    return cls


@dataclass
class _ConfigBase:
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                out[f.name] = value.to_dict() if isinstance(value, _ConfigBase) else value
        return out


@accepts_extra_fields
@dataclass
class MplugOwlVisionConfig(_ConfigBase):
    """The ViT-L/14 vision encoder (official ``MplugOwlVisionConfig`` defaults)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 448
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@accepts_extra_fields
@dataclass
class MplugOwlVisualAbstractorConfig(_ConfigBase):
    """The visual abstractor: learnable queries cross-attending to the ViT tokens."""

    num_learnable_queries: int = 64
    hidden_size: int = 1024
    num_hidden_layers: int = 6
    num_attention_heads: int = 16
    intermediate_size: int = 2816
    layer_norm_eps: float = 1e-6
    encoder_hidden_size: int = 1024
    grid_size: int | None = None

    @property
    def grid(self) -> int:
        """Side of the patch grid of the key positions (official: ``grid_size or 32``)."""
        return int(self.grid_size) if self.grid_size else 32


@accepts_extra_fields
@dataclass
class MPLUGOwl2Config(_ConfigBase):
    """LLaMA fields (official names) + ``visual_config`` with the two visual sub-configs."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    visual_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def vision(self) -> MplugOwlVisionConfig:
        return MplugOwlVisionConfig.from_dict(self.visual_config.get("visual_model") or {})

    @property
    def abstractor(self) -> MplugOwlVisualAbstractorConfig:
        return MplugOwlVisualAbstractorConfig.from_dict(
            self.visual_config.get("visual_abstractor") or {}
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens one image (or video frame) becomes: the queries + ``vit_eos``."""
        return self.abstractor.num_learnable_queries + 1

    def llama_config(self) -> Any:
        """The equivalent ``transformers.LlamaConfig`` (for its building blocks)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
            attention_bias=self.attention_bias,
            mlp_bias=False,
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> MPLUGOwl2Config:
        """Read ``config.json`` from a checkpoint directory (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        with open(file, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["visual_config"] = {
            **self.visual_config,
            "visual_model": self.vision.to_dict(),
            "visual_abstractor": self.abstractor.to_dict(),
        }
        out.setdefault("model_type", "mplug_owl2")
        out.setdefault("architectures", ["MPLUGOwl2LlamaForCausalLM"])
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with open(Path(directory) / "config.json", "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
