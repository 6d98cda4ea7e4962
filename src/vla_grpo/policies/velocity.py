"""Velocity networks over a whole action chunk, conditioned on the reading trunk: an MLP and a π0-style expert.

Both take the trunk's :class:`~vla_grpo.policies.trunk.ObservationFeatures`
once per decision (:meth:`encode`, what :meth:`FlowPolicyMixin.flow_context`
returns) and then give ``v(x [N, S, H, A], t [N, S])`` at ``S`` points per
observation (:meth:`forward`), so the ``K`` denoising steps reuse the encoding
and scoring evaluates all ``K`` steps in one call.

* :class:`MLPVelocity`: the flattened chunk, a time embedding and the trunk's
  hidden feature, summed into one MLP.
* :class:`ExpertVelocity`: π0's action expert in small: one token per chunk step
  (its action fused with the time by an MLP, as π0's ``action_time_mlp``) goes
  through transformer layers whose attention reads ``[context tokens ; action
  tokens]``: the context tokens are the trunk's (each position of the last conv
  feature map, the instruction, the state, the trunk's hidden feature), their
  keys and values computed once per decision like π0's prefix KV cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vla_grpo.policies.trunk import STATE_FEATURES, ObservationFeatures

VELOCITY_NETS = ("mlp", "expert")


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[..., dim]`` of times in [0, 1] (periods 4e-3 .. 4, as π0's)."""
    half = dim // 2
    freqs = 2 * math.pi / (4e-3 * (4.0 / 4e-3) ** torch.linspace(0, 1, half, device=t.device))
    angles = t.unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MLPVelocity(nn.Module):
    """``v = MLP(W_x x + W_t emb(t) + W_c hidden)`` over the flattened chunk.

    Args:
        chunk_size, action_dim: the chunk's ``H x A``.
        hidden_dim: width of the trunk's hidden feature.
        width: the MLP's width.
        depth: residual blocks (LayerNorm, Linear, GELU, Linear) after the input sum.
    """

    def __init__(self, chunk_size: int, action_dim: int, hidden_dim: int, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.width = width
        size = chunk_size * action_dim
        self.x_in = nn.Linear(size, width)
        self.t_in = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.context_in = nn.Linear(hidden_dim, width)
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
            for _ in range(depth)
        ])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, size))

    def encode(self, features: ObservationFeatures) -> torch.Tensor:
        """``[N, width]``: the condition's share of the first layer, once per decision."""
        return self.context_in(features.hidden)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.x_in(x.flatten(-2)) + self.t_in(time_embedding(t, self.width)) + context.unsqueeze(1)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).view_as(x)


class ExpertLayer(nn.Module):
    """Pre-norm attention of the action tokens over ``[context ; actions]``, then an MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attn = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.context_kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [N, L, D] -> [N, heads, L, D/heads]

    def context_keys(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the context tokens ``[N, M, width]`` (the prefix cache)."""
        k, v = self.context_kv(context).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, a: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q, k, v = (self._heads(z) for z in self.qkv(self.norm_attn(a)).chunk(3, dim=-1))
        k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        a = a + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2))
        return a + self.mlp(self.norm_mlp(a))


class ExpertVelocity(nn.Module):
    """A small π0-style action expert attending to the trunk's tokens.

    Args:
        chunk_size, action_dim: the chunk's ``H x A``.
        hidden_dim, text_dim, vision_channels, map_size: the trunk's feature widths and the side
            of its last feature map (image side / 8).
        width: the expert's token width.
        depth: transformer layers.
        heads: attention heads.
    """

    def __init__(self, chunk_size: int, action_dim: int, hidden_dim: int, text_dim: int, vision_channels: int,
                 map_size: int, width: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        if width % heads or (width // heads) % 2:
            raise ValueError(f"`policy.velocity_width` {width} must split into `policy.velocity_heads` "
                             f"{heads} heads of even width")
        self.width = width
        self.vision_in = nn.Linear(vision_channels, width)
        self.vision_pos = nn.Parameter(torch.randn(map_size * map_size, width) * 0.02)
        self.text_in = nn.Linear(text_dim, width)
        self.state_in = nn.Linear(STATE_FEATURES, width)
        self.hidden_in = nn.Linear(hidden_dim, width)
        self.context_norm = nn.LayerNorm(width)
        # pi0's action_time_mlp: [action embedding ; time embedding] -> width, swish
        self.action_in = nn.Linear(action_dim, width)
        self.action_time = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        self.step_pos = nn.Parameter(torch.randn(chunk_size, width) * 0.02)
        self.layers = nn.ModuleList([ExpertLayer(width, heads) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, action_dim))

    def encode(self, features: ObservationFeatures) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values of the context tokens: map positions, instruction, state, hidden."""
        vision = self.vision_in(features.vision_map.flatten(2).transpose(1, 2)) + self.vision_pos
        tokens = torch.cat([vision, self.text_in(features.text).unsqueeze(1), self.state_in(features.state).unsqueeze(1),
                            self.hidden_in(features.hidden).unsqueeze(1)], dim=1)
        tokens = self.context_norm(tokens)
        return [layer.context_keys(tokens) for layer in self.layers]

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: list) -> torch.Tensor:
        n, s, h, _ = x.shape
        temb = time_embedding(t, self.width).unsqueeze(2).expand(n, s, h, self.width)
        a = self.action_time(torch.cat([self.action_in(x), temb], dim=-1)) + self.step_pos
        a = a.flatten(0, 1)  # [N*S, H, width]: each point attends to its own observation's context
        for layer, (k, v) in zip(self.layers, context, strict=True):
            a = layer(a, (k.repeat_interleave(s, 0), v.repeat_interleave(s, 0)) if s > 1 else (k, v))
        return self.out(a).view_as(x)


def build_velocity(kind: str, *, chunk_size: int, action_dim: int, hidden_dim: int, text_dim: int,
                   vision_channels: int, map_size: int, width: int, depth: int, heads: int) -> nn.Module:
    """The velocity network ``kind`` (``"mlp"`` or ``"expert"``) for the trunk's feature sizes."""
    if width % 2:
        raise ValueError(f"`policy.velocity_width` must be even (got {width})")
    if kind == "mlp":
        return MLPVelocity(chunk_size, action_dim, hidden_dim, width, depth)
    if kind == "expert":
        return ExpertVelocity(chunk_size, action_dim, hidden_dim, text_dim, vision_channels, map_size,
                              width, depth, heads)
    raise ValueError(f"`policy.velocity` must be one of {VELOCITY_NETS} (got {kind!r})")


__all__ = ["VELOCITY_NETS", "ExpertVelocity", "MLPVelocity", "build_velocity", "time_embedding"]
