"""mPLUG-Owl2's visual side: the ViT-L/14 encoder and the visual abstractor.

Module and parameter names follow the official checkpoints (``model.vision_model.*``,
``model.visual_abstractor.*``). Two details matter for equality with the official model:
the vision tower's fused QKV is laid out *per head* (q, k, v of head h are rows
``[3·d·h, 3·d·(h+1))``), and each abstractor layer adds its attention output to the
*normalised* queries, with fixed sin-cos positions on queries and keys.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqpipe.models.mplug_owl2.config import MplugOwlVisionConfig, MplugOwlVisualAbstractorConfig


class QuickGELU(nn.Module):
    """``x · sigmoid(1.702 x)`` — what the official vision MLP uses whatever ``hidden_act``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MplugOwlVisionEmbeddings(nn.Module):
    def __init__(self, config: MplugOwlVisionConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embed = nn.Conv2d(
            config.num_channels, d, config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, d))
        self.pre_layernorm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], 1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        if x.shape[1] > self.position_embedding.shape[1]:
            raise ValueError(
                f"images give {x.shape[1]} tokens but the position embedding has only "
                f"{self.position_embedding.shape[1]}: inputs must be config.image_size pixels"
            )
        return self.pre_layernorm(x + self.position_embedding[:, : x.shape[1]].to(x.dtype))


class MplugOwlVisionAttention(nn.Module):
    def __init__(self, config: MplugOwlVisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # Per-head interleaved layout: (B, N, heads, [q|k|v], head_dim).
        qkv = self.query_key_value(x).reshape(b, n, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.dense(out.transpose(1, 2).reshape(b, n, d))


class MplugOwlMLP(nn.Module):
    def __init__(self, config: MplugOwlVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MplugOwlVisionEncoderLayer(nn.Module):
    def __init__(self, config: MplugOwlVisionConfig) -> None:
        super().__init__()
        self.self_attn = MplugOwlVisionAttention(config)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MplugOwlMLP(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class MplugOwlVisionEncoder(nn.Module):
    def __init__(self, config: MplugOwlVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MplugOwlVisionEncoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x


class MplugOwlVisionModel(nn.Module):
    """Pixels [B, 3, S, S] → all 1 + (S/14)² tokens after ``post_layernorm`` (CLS included)."""

    def __init__(self, config: MplugOwlVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = MplugOwlVisionEmbeddings(config)
        self.encoder = MplugOwlVisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE's 1-D sin-cos embedding: [sin(p·ω), cos(p·ω)], ω_i = 1 / 10000^(i / (dim/2))."""
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float32), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """MAE's 2-D sin-cos embedding on a grid×grid patch grid, row-major: the first half of the
    dims encodes the column index, the second half the row index; a zero row for CLS."""
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim], dtype=emb.dtype), emb], axis=0)
    return emb


class MplugOwlVisualAbstractorMultiHeadAttention(nn.Module):
    def __init__(self, config: MplugOwlVisualAbstractorConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.encoder_hidden_size, config.hidden_size)
        self.value = nn.Linear(config.encoder_hidden_size, config.hidden_size)
        # Fixed positions: not learned, recomputed (checkpoints may or may not carry them).
        self.register_buffer("q_pos_embed", torch.empty(0), persistent=False)
        self.register_buffer("k_pos_embed", torch.empty(0), persistent=False)
        self.reset_positions()

    def reset_positions(self, device: torch.device | str | None = None) -> None:
        c = self.config
        q_pos = sincos_1d(c.hidden_size, np.arange(c.num_learnable_queries, dtype=np.float32))
        k_pos = sincos_2d(c.hidden_size, c.grid, cls_token=True)
        self.q_pos_embed = torch.from_numpy(q_pos).float().to(device)
        self.k_pos_embed = torch.from_numpy(k_pos).float().to(device)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
        n_kv = keys_values.shape[1]
        pos = torch.cat([self.q_pos_embed, self.k_pos_embed], dim=0).to(queries.dtype)
        if pos.shape[0] != n_kv:
            raise ValueError(
                f"abstractor positions cover {pos.shape[0] - self.q_pos_embed.shape[0]} vision "
                f"tokens but got {n_kv - queries.shape[1]} (check visual_abstractor.grid_size)"
            )
        q = self._heads(self.query(queries + self.q_pos_embed.to(queries.dtype)))
        k = self._heads(self.key(keys_values + pos))
        v = self._heads(self.value(keys_values))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).flatten(2)


class MplugOwlVisualAbstractorMLP(nn.Module):
    """SwiGLU with a LayerNorm on the hidden layer: ``w2(ffn_ln(silu(w1 x) · w3 x))``."""

    def __init__(self, config: MplugOwlVisualAbstractorConfig) -> None:
        super().__init__()
        d, h = config.hidden_size, config.intermediate_size
        self.w1 = nn.Linear(d, h)
        self.w2 = nn.Linear(h, d)
        self.w3 = nn.Linear(d, h)
        self.ffn_ln = nn.LayerNorm(h, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class MplugOwlVisualAbstractorCrossOutput(nn.Module):
    def __init__(self, config: MplugOwlVisualAbstractorConfig) -> None:
        super().__init__()
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)  # eps 1e-5, as the official module
        self.mlp = MplugOwlVisualAbstractorMLP(config)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        x = residual + self.out_proj(context)
        return x + self.mlp(self.norm2(x))


class MplugOwlVisualAbstractorAttention(nn.Module):
    def __init__(self, config: MplugOwlVisualAbstractorConfig) -> None:
        super().__init__()
        self.attention = MplugOwlVisualAbstractorMultiHeadAttention(config)
        self.output = MplugOwlVisualAbstractorCrossOutput(config)
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.normk = nn.LayerNorm(config.hidden_size)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        qn = self.norm1(queries)
        kv = torch.cat([qn, self.normk(image_tokens)], dim=1)
        return self.output(self.attention(qn, kv), qn)  # residual on the *normalised* queries


class MplugOwlVisualAbstractorLayer(nn.Module):
    def __init__(self, config: MplugOwlVisualAbstractorConfig) -> None:
        super().__init__()
        self.crossattention = MplugOwlVisualAbstractorAttention(config)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.crossattention(queries, image_tokens)


class MplugOwlVisualAbstractorEncoder(nn.Module):
    def __init__(self, config: MplugOwlVisualAbstractorConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MplugOwlVisualAbstractorLayer(config) for _ in range(config.num_hidden_layers)
        )


class MplugOwlVisualAbstractorModel(nn.Module):
    """ViT tokens [B, N, 1024] → visual tokens [B, queries + 1, language hidden]."""

    def __init__(self, config: MplugOwlVisualAbstractorConfig, language_hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = MplugOwlVisualAbstractorEncoder(config)
        self.visual_fc = nn.Linear(config.hidden_size, language_hidden_size)
        self.query_embeds = nn.Parameter(
            torch.zeros(1, config.num_learnable_queries, config.hidden_size)
        )
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, language_hidden_size))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.query_embeds.expand(image_tokens.shape[0], -1, -1).to(image_tokens.dtype)
        for layer in self.encoder.layers:
            x = layer(x, image_tokens)
        x = self.visual_fc(x)
        eos = self.vit_eos.expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x, eos], dim=1)
