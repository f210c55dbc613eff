"""mPLUG-Owl2 for causal LM, as Q-Align and Compare2Score use it — our own PyTorch code.

``forward(input_ids, images=...)`` splices each image placeholder (−200) in ``input_ids``
with that image's 65 visual tokens (a list entry of several frames puts all their tokens at
one placeholder: that is how video works), exactly as the official model does, but keeps
padding correct: the attention mask follows the splice, rows of different spliced length are
left-padded, and positions skip padding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from vqpipe.models.mplug_owl2.checkpoint import load_into, save_weights, shard_files
from vqpipe.models.mplug_owl2.config import MPLUGOwl2Config
from vqpipe.models.mplug_owl2.llama import KVCache, Modality, MPLUGOwl2Decoder
from vqpipe.models.mplug_owl2.tokenizer import IMAGE_TOKEN_INDEX
from vqpipe.models.mplug_owl2.visual import (
    MplugOwlVisionModel,
    MplugOwlVisualAbstractorModel,
)

IGNORE_INDEX = -100
logger = logging.getLogger(__name__)

Images = torch.Tensor | list[torch.Tensor] | None


class MPLUGOwl2LlamaModel(MPLUGOwl2Decoder):
    """``model.*``: the decoder plus ``vision_model`` and ``visual_abstractor``."""

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__(config)
        self.vision_model = MplugOwlVisionModel(config.vision)
        self.visual_abstractor = MplugOwlVisualAbstractorModel(
            config.abstractor, config.hidden_size
        )


class MPLUGOwl2ForCausalLM(nn.Module):
    """The official ``MPLUGOwl2LlamaForCausalLM`` module tree and state-dict keys."""

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.config = config
        self.model = MPLUGOwl2LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    # ------------------------------------------------------------------ images
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels [N, 3, S, S] → visual tokens [N, 65, hidden] (64 queries + ``vit_eos``)."""
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.model.visual_abstractor(self.model.vision_model(pixel_values))

    # ------------------------------------------------------------------ pieces for scorers
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``input_ids`` [..., T] → [..., T, hidden]."""
        return self.model.embed_tokens(input_ids)

    def decode(
        self,
        inputs_embeds: torch.Tensor,
        modality: Modality = 0,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Final hidden states [B, T, hidden] (``last_only``: [B, 1, hidden]) of embeddings
        [B, T, hidden] that continue ``past_key_values`` (see
        :meth:`~vqpipe.models.mplug_owl2.llama.MPLUGOwl2Decoder.decode` for ``modality``,
        the mask, positions and shared caches)."""
        hidden, _ = self.model.decode(
            inputs_embeds,
            modality,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            last_only=last_only,
        )
        return hidden

    def decode_prefix(self, inputs_embeds: torch.Tensor, modality: Modality = 0) -> KVCache:
        """The KV cache of a prompt prefix, embeddings [P, T, hidden], for :meth:`decode`'s
        ``past_key_values`` (no logits: only the last position goes through the final norm)."""
        _, cache = self.model.decode(inputs_embeds, modality, use_cache=True, last_only=True)
        assert cache is not None
        return cache

    def token_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits of ``token_ids`` [K] only, at the last position of ``hidden`` [B, T, hidden]
        → [B, K] in the hidden states' dtype: K rows of the LM head, not the vocabulary
        (transformers' ``logits_to_keep``, on both axes)."""
        return hidden[:, -1] @ self.lm_head.weight[token_ids].T

    def placeholder_features(self, images: Images) -> list[torch.Tensor]:
        """One [tokens, hidden] block per image placeholder, in order.

        ``images`` [N, 3, S, S]: one image per placeholder. A list (or [N, F, 3, S, S]): each
        entry's frames [F_i, 3, S, S] go to one placeholder, 65·F_i tokens (video).
        """
        if images is None:
            return []
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            return list(self.encode_images(images).unbind(0))
        frames = list(images)
        counts = [int(f.shape[0]) for f in frames]
        feats = self.encode_images(torch.cat(frames, dim=0))
        return [f.flatten(0, 1) for f in feats.split(counts, dim=0)]

    def splice(
        self,
        input_ids: torch.Tensor,
        images: Images,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Replace each −200 with its visual tokens. Returns ``inputs_embeds`` [B, T, D],
        ``modality`` [B, T] (1 = visual), ``attention_mask`` [B, T] and ``labels`` (image
        tokens ignored); rows of unequal length are left-padded (mask 0)."""
        features = self.placeholder_features(images)
        n_placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if n_placeholders != len(features):
            raise ValueError(
                f"input_ids hold {n_placeholders} image placeholders ({IMAGE_TOKEN_INDEX}) but "
                f"{len(features)} images (or frame lists) were given"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        embed = self.model.embed_tokens
        rows: list[tuple[torch.Tensor, ...]] = []
        k = 0
        for b in range(input_ids.shape[0]):
            ids, mask = input_ids[b], attention_mask[b].bool()
            lab = labels[b] if labels is not None else None
            parts, mods, masks, labs = [], [], [], []
            start = 0
            for pos in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                parts.append(embed(ids[start:pos]))
                mods.append(torch.zeros(pos - start, dtype=torch.long, device=ids.device))
                masks.append(mask[start:pos])
                if lab is not None:
                    labs.append(lab[start:pos])
                feat = features[k].to(parts[-1].dtype)
                k += 1
                parts.append(feat)
                mods.append(torch.ones(len(feat), dtype=torch.long, device=ids.device))
                masks.append(mask[pos].expand(len(feat)))
                if lab is not None:
                    labs.append(torch.full((len(feat),), IGNORE_INDEX, device=ids.device))
                start = pos + 1
            parts.append(embed(ids[start:]))
            mods.append(torch.zeros(len(ids) - start, dtype=torch.long, device=ids.device))
            masks.append(mask[start:])
            if lab is not None:
                labs.append(lab[start:])
            row = (torch.cat(parts), torch.cat(mods), torch.cat(masks))
            rows.append(row + ((torch.cat(labs),) if lab is not None else ()))
        length = max(len(r[0]) for r in rows)

        def left_pad(x: torch.Tensor, value: float | int | bool) -> torch.Tensor:
            pad = [0, 0] * (x.ndim - 1) + [length - len(x), 0]
            return F.pad(x, pad, value=value) if length > len(x) else x

        return {
            "inputs_embeds": torch.stack([left_pad(r[0], 0.0) for r in rows]),
            "modality": torch.stack([left_pad(r[1], 0) for r in rows]),
            "attention_mask": torch.stack([left_pad(r[2], False) for r in rows]),
            "labels": (
                torch.stack([left_pad(r[3], IGNORE_INDEX) for r in rows])
                if labels is not None
                else None
            ),
        }

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        images: Images = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        modality_indicators: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """Logits [B, T, vocab] (float32) over the spliced sequence; ``logits_to_keep`` > 0
        keeps only the last positions. ``labels`` give the shifted LM loss."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            if (input_ids == IMAGE_TOKEN_INDEX).any() or images is not None:
                spliced = self.splice(input_ids, images, attention_mask, labels)
                inputs_embeds = spliced["inputs_embeds"]
                modality_indicators = spliced["modality"]
                labels = spliced["labels"]
                padded = not bool(spliced["attention_mask"].all())
                attention_mask = spliced["attention_mask"] if padded else None
            else:
                inputs_embeds = self.model.embed_tokens(input_ids)
        modality = modality_indicators if modality_indicators is not None else 0
        if attention_mask is not None and past_key_values:
            past_len = past_key_values[0][0].shape[2]
            if attention_mask.shape[1] == inputs_embeds.shape[1]:  # mask of the new part only
                ones = attention_mask.new_ones(attention_mask.shape[0], past_len)
                attention_mask = torch.cat([ones, attention_mask], dim=1)
        hidden, cache = self.model.decode(
            inputs_embeds,
            modality,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=IGNORE_INDEX,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_config(
        cls,
        config: MPLUGOwl2Config,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        seed: int = 0,
        std: float = 0.02,
    ) -> MPLUGOwl2ForCausalLM:
        """A model with random weights (normal(0, std); norm scales 1 + normal(0, 0.1)), for
        tests and for benchmarks of the real shapes."""
        device = torch.device(device)
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device=device)
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=generator, device=device)
                if param.ndim == 1 and name.endswith("weight"):  # LayerNorm / RMSNorm scales
                    param.copy_(1.0 + 0.1 * noise)
                else:
                    param.copy_(std * noise)
        model._reset_buffers(device)
        return model.to(dtype=dtype).eval()

    def _reset_buffers(self, device: torch.device) -> None:
        """Recompute the non-persistent buffers (rotary frequencies, abstractor positions)."""
        self.model.reset_rotary(device)
        for module in self.modules():
            if hasattr(module, "reset_positions"):
                module.reset_positions(device)

    @classmethod
    def from_pretrained(
        cls,
        path_or_uri: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> MPLUGOwl2ForCausalLM:
        """Load an official checkpoint directory: a local path, an fsspec URI (``s3://...``,
        copied to the local cache once) or, when online, a Hugging Face hub id."""
        from vqpipe.models.devices import resolve_dtype

        directory = resolve_model_dir(path_or_uri, storage_options)
        config = MPLUGOwl2Config.from_pretrained(directory)
        device = torch.device(device or "cpu")
        dtype = resolve_dtype(dtype, torch.device("cpu")) if dtype is not None else torch.float32
        with torch.device("meta"):
            model = cls(config)
        load_into(model, shard_files(directory), dtype, device)
        model._reset_buffers(device)
        model.source = str(directory)
        return model.to(device).eval()

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        max_shard_bytes: int = 5 * 1024**3,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> list[Path]:
        """``config.json`` + safetensors in the official key layout (``state_dict``: weights
        gathered elsewhere, e.g. from DeepSpeed ZeRO-3 partitions)."""
        self.config.save_pretrained(directory)
        weights = self.state_dict() if state_dict is None else state_dict
        return save_weights(weights, directory, max_shard_bytes)


def resolve_model_dir(
    path_or_uri: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> Path:
    """A local checkpoint directory for a path, an fsspec URI or a hub id."""
    from vqpipe.io.checkpoints import resolve_checkpoint

    return resolve_checkpoint(path_or_uri, storage_options=storage_options, hub_files=HUB_FILES)


HUB_FILES = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
]
"""What a scorer needs from a hub repository (never its remote code)."""
