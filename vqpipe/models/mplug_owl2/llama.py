"""The LLaMA-2 decoder with mPLUG-Owl2's modality-adaptive modules.

Visual tokens (modality 1) and text tokens (modality 0) get their own K/V projections and
their own RMSNorms (``*.multiway.{0,1}``); Q, O and the MLP are shared. Built from
transformers' LLaMA blocks (RMSNorm, MLP, rotary embedding) and torch SDPA.

``modality`` is either an indicator tensor [B, T] (1 = visual) or an int ``n``: the first
``n`` positions of every row are visual, the rest text (the scorers' rectangular layout,
which avoids gathers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import CausalBias, causal_lower_right
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    repeat_kv,
)

from vqpipe.models.mplug_owl2.config import MPLUGOwl2Config

Modality = torch.Tensor | int
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class MultiwayNetwork(nn.Module):
    """One copy of a module per modality; each token goes through its modality's copy."""

    def __init__(self, make: Callable[[], nn.Module], num_multiway: int = 2) -> None:
        super().__init__()
        self.multiway = nn.ModuleList(make() for _ in range(num_multiway))

    def forward(self, x: torch.Tensor, modality: Modality) -> torch.Tensor:
        text, visual = self.multiway[0], self.multiway[1]
        if isinstance(modality, int):
            if modality <= 0:
                return text(x)
            if modality >= x.shape[1]:
                return visual(x)
            return torch.cat([visual(x[:, :modality]), text(x[:, modality:])], dim=1)
        is_visual = modality.bool()
        if not bool(is_visual.any()):
            return text(x)
        if bool(is_visual.all()):
            return visual(x)
        out_visual, out_text = visual(x[is_visual]), text(x[~is_visual])
        out = x.new_empty(*x.shape[:-1], out_text.shape[-1])
        out[is_visual] = out_visual
        out[~is_visual] = out_text
        return out


class MPLUGOwl2Attention(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        d, bias = config.hidden_size, config.attention_bias
        kv_out = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = MultiwayNetwork(lambda: nn.Linear(d, kv_out, bias=bias))
        self.v_proj = MultiwayNetwork(lambda: nn.Linear(d, kv_out, bias=bias))
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        modality: Modality,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x, modality).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x, modality).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rope)
        if past is not None:
            k, v = after_prefix(past[0], k), after_prefix(past[1], v)
        present = (k, v)
        groups = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        if isinstance(mask, CausalBias) and not hasattr(mask, "seq_len_q"):
            # DeepSpeed ZeRO-3's forward hooks rebuild tensor arguments: the bias arrives
            # without its lengths; made again here, where nothing stands between it and SDPA
            mask = lower_right_causal(t, k.shape[-2], q.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and past is None and t > 1
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), present


def after_prefix(past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Cached keys (or values) [P, H, L, D] followed by the new ones [B, H, T, D].

    A cache of batch P < B is shared, tiled over the rows: row r continues cache row r mod P
    (P = 1: one prefix for all; Compare2Score: m anchors under B·m rows). It is written once,
    straight into this layer's result, so a caller never repeats a cache per row (that kept
    a copy for every layer at once)."""
    b, p = new.shape[0], past.shape[0]
    if p == b:
        return torch.cat([past, new], dim=2)
    if p == 0 or b % p:
        raise ValueError(f"a cache of batch {p} cannot be shared by {b} rows")
    n = past.shape[2]
    out = new.new_empty(b, new.shape[1], n + new.shape[2], new.shape[3])
    out.view(b // p, p, *out.shape[1:])[..., :n, :] = past
    out[:, :, n:] = new
    return out


class MPLUGOwl2DecoderLayer(nn.Module):
    def __init__(self, config: MPLUGOwl2Config, llama_config: Any) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = MPLUGOwl2Attention(config)
        self.mlp = LlamaMLP(llama_config)
        self.input_layernorm = MultiwayNetwork(lambda: LlamaRMSNorm(d, eps=eps))
        self.post_attention_layernorm = MultiwayNetwork(lambda: LlamaRMSNorm(d, eps=eps))

    def forward(
        self,
        x: torch.Tensor,
        modality: Modality,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, present = self.self_attn(self.input_layernorm(x, modality), modality, rope, mask, past)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x, modality))
        return x, present


def attention_mask_4d(
    key_mask: torch.Tensor | None, q_len: int, past_len: int, batch: int, device: torch.device
) -> torch.Tensor | None:
    """What ``attn_mask`` SDPA gets: causal and not padding.

    Without padding (``key_mask`` None) no tensor is built, so SDPA may pick its flash or
    memory-efficient kernels: ``None`` without a cached prefix (the layer passes
    ``is_causal``, top-left aligned, right when query and key lengths are equal) or for one
    query after a prefix (it sees every key); a :func:`causal_lower_right` bias for several
    queries after a prefix (SDPA's ``is_causal`` would align them top-left; the bias runs the
    flash / efficient kernels' bottom-right causal mode on CUDA and materialises only where
    neither applies). With padding: a boolean [B, 1, q_len, past_len + q_len], where every
    query also sees its own position so fully padded rows stay finite (never read)."""
    if key_mask is None:
        if past_len == 0 or q_len == 1:
            return None
        return lower_right_causal(q_len, past_len + q_len, device)
    total = past_len + q_len
    q_pos = torch.arange(past_len, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None] & key_mask.bool()[:, None, :]
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed.expand(batch, -1, -1)[:, None]


def lower_right_causal(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """:func:`causal_lower_right` (query i sees keys up to ``kv_len - q_len + i``), or the
    boolean mask it stands for where the tensor subclass cannot be made intact: DeepSpeed
    ZeRO-3 patches tensor creation (the bias comes out without its ``seq_len_q``), and a
    ``TorchDispatchMode`` (FlopCounterMode) refuses the subclass."""
    try:
        bias = causal_lower_right(q_len, kv_len)
        if hasattr(bias, "seq_len_q") and hasattr(bias, "seq_len_kv"):
            return bias
    except RuntimeError:
        pass
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)


def position_ids_from_mask(key_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Positions that skip padding: ``cumsum(mask) − 1`` over past + current, last ``q_len``."""
    positions = key_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -q_len:]


class MPLUGOwl2Decoder(nn.Module):
    """The text-side stack: embeddings, decoder layers, final norm (``model.*`` keys)."""

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.config = config
        llama_config = config.llama_config()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            MPLUGOwl2DecoderLayer(config, llama_config) for _ in range(config.num_hidden_layers)
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(llama_config)
        self.gradient_checkpointing = False

    def reset_rotary(self, device: torch.device | str | None = None) -> None:
        """Recompute the rotary buffers (after building the model on the meta device)."""
        self.rotary_emb = LlamaRotaryEmbedding(self.config.llama_config()).to(device)

    def decode(
        self,
        inputs_embeds: torch.Tensor,
        modality: Modality = 0,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Run the layers on embeddings. ``attention_mask`` [B, past + T] marks real tokens
        (None: no padding, and no mask tensor reaches SDPA, see :func:`attention_mask_4d`);
        ``past_key_values`` of batch P < B are shared, row r continuing cache row r mod P
        (:func:`after_prefix`); ``last_only`` returns only the last position's hidden state."""
        b, t, _ = inputs_embeds.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = position_ids_from_mask(attention_mask, t)
            else:
                position_ids = torch.arange(past_len, past_len + t, device=inputs_embeds.device)
                position_ids = position_ids[None].expand(b, -1)
        mask = attention_mask_4d(attention_mask, t, past_len, b, inputs_embeds.device)
        rope = self.rotary_emb(inputs_embeds, position_ids)
        x = inputs_embeds
        cache: KVCache | None = [] if use_cache else None
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values else None
            if self.gradient_checkpointing and self.training:
                x, present = torch.utils.checkpoint.checkpoint(
                    layer, x, modality, rope, mask, past, use_reentrant=False
                )
            else:
                x, present = layer(x, modality, rope, mask, past)
            if cache is not None:
                cache.append(present)
        if last_only:
            x = x[:, -1:]
        return self.norm(x), cache
