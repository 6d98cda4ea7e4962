"""The reading trunk: a frozen sentence encoder conditions a conv trunk (FiLM) on the image, plus the state.

Shared by the token reading VLA (:mod:`vla_grpo.policies.reading`) and the flow
reading VLA (:mod:`vla_grpo.policies.flow_reading`). Layout of one pass::

    instruction --(frozen all-MiniLM-L6-v2, cached)--> pooled [384] + tokens [T, 384]
        -> text feature t [text_dim]: the pooled embedding (``conditioning="pooled"``)
           or attention over the token features (``"tokens"``: one learned query per block)
    image [3, S, S] -> 4 conv blocks (GroupNorm, FiLM(t), SiLU), strides 2-2-1-2
        -> feature map [C, S/8, S/8] -> spatial softmax keypoints (x, y per channel) + mean-pooled channels
    state -> Linear
    [vision, state, t] -> MLP (LayerNorm, GELU) -> hidden [hidden_dim]

Why FiLM: the instruction decides *which* object and relation matter, so it
has to shape the visual features, not only be concatenated after them
(docs/experiments/reading_policy.md). Why spatial softmax: the
policy needs where things are, which global pooling throws away. The FiLM
layers start at the identity, so an untrained trunk is unconditioned.

The module names (``text_proj``, ``token_attention``, ``blocks``, ``state_proj``,
``trunk``) are the state-dict keys of both policies, so one policy's trunk can
start the other's. The encoder is not part of the weights unless
``text_tune_layers > 0``: a policy directory records which encoder to load.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import nn

from vla_grpo.policies.base import instruction_strings
from vla_grpo.policies.pretrained import PolicyDirectory, optional_path, save_state
from vla_grpo.policies.text import DEFAULT_ENCODER, TextEncoder

ENCODER_DIR = "text_encoder"
CONDITIONINGS = ("pooled", "tokens")
#: width of the state feature
STATE_FEATURES = 64


class FiLMBlock(nn.Module):
    """conv -> GroupNorm -> FiLM(text) -> SiLU, with a residual when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, text_dim: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.GroupNorm(min(8, c_out), c_out)
        self.film = nn.Linear(text_dim, 2 * c_out)
        nn.init.zeros_(self.film.weight)  # starts at gamma = 1, beta = 0: unconditioned
        nn.init.zeros_(self.film.bias)
        self.residual = c_in == c_out and stride == 1

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(text).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        y = F.silu(self.norm(self.conv(x)) * (1 + gamma) + beta)
        return x + y if self.residual else y


class TokenAttention(nn.Module):
    """One learned query per block attends over the instruction's token features."""

    def __init__(self, encoder_dim: int, text_dim: int, num_queries: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, text_dim) * 0.02)
        self.keys = nn.Linear(encoder_dim, text_dim)
        self.values = nn.Linear(encoder_dim, text_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, T, D]`` (zero rows = padding) -> ``[B, num_queries, text_dim]``."""
        pad = tokens.abs().sum(-1) == 0
        scores = torch.einsum("qd,btd->bqt", self.queries, self.keys(tokens)) / self.queries.shape[-1] ** 0.5
        scores = scores.masked_fill(pad.unsqueeze(1), float("-inf"))
        return torch.einsum("bqt,btd->bqd", scores.softmax(-1), self.values(tokens))


def spatial_softmax(x: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) in [-1, 1] of each channel's softmax over positions: ``[B, C, H, W] -> [B, 2C]``."""
    b, c, h, w = x.shape
    attn = x.flatten(2).softmax(-1).view(b, c, h, w)
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    return torch.cat([(attn.sum(2) * xs).sum(-1), (attn.sum(3) * ys).sum(-1)], dim=1)


class ObservationFeatures(NamedTuple):
    """What the trunk makes of a batch of ``N`` observations (``batch_shape`` flattened to ``N``)."""

    batch_shape: torch.Size
    vision_map: torch.Tensor  #: ``[N, C, h, w]``, the last conv block's feature map
    text: torch.Tensor        #: ``[N, text_dim]``
    state: torch.Tensor       #: ``[N, 64]``
    hidden: torch.Tensor      #: ``[N, hidden_dim]``, the trunk MLP's output


class ReadingTrunk:
    """The trunk's modules and forward, mixed into a ``VLAWrapperBase`` policy.

    The policy's ``__init__`` calls :meth:`_encoder_spec` (which encoder), then, after the
    base constructor, :meth:`_init_trunk` (attributes, encoder, modules).
    """

    def _encoder_spec(self, source: PolicyDirectory | None, text_encoder: str | None) -> str | None:
        """The encoder to load: the argument, else the one the loaded directory names."""
        text_encoder = optional_path(text_encoder)
        if source is not None and text_encoder is None:
            text_encoder = _stored_encoder(source)
        return text_encoder

    def _init_trunk(self, cfg, state_dim: int, image_size: int, text_encoder: str | None) -> None:
        """Check the trunk sizes of ``cfg``, set its attributes, load the encoder and build the modules."""
        if cfg.conditioning not in CONDITIONINGS:
            raise ValueError(f"`policy.conditioning` must be one of {CONDITIONINGS} (got {cfg.conditioning!r})")
        if len(cfg.channels) != 4 or min(cfg.channels) < 1:
            raise ValueError(f"`policy.channels` must be 4 positive widths (got {list(cfg.channels)})")
        self.state_dim, self.image_size = int(state_dim), int(image_size)
        self.hidden_dim, self.text_dim = int(cfg.hidden_dim), int(cfg.text_dim)
        self.channels = tuple(int(c) for c in cfg.channels)
        self.conditioning = cfg.conditioning
        self._noise = 0.0
        encoder = TextEncoder(text_encoder, tune_layers=cfg.text_tune_layers)
        if encoder.tune_layers > 0:
            self.text_encoder = encoder  # trained: its weights are the policy's
        else:
            object.__setattr__(self, "text_encoder", encoder)  # frozen: outside the state dict and optimizer
        self._build_trunk(encoder.dim)

    def _build_trunk(self, encoder_dim: int) -> None:
        c1, c2, c3, c4 = self.channels
        t = self.text_dim
        self.text_proj = nn.Sequential(nn.Linear(encoder_dim, t), nn.GELU(), nn.Linear(t, t))
        self.token_attention = TokenAttention(encoder_dim, t, 4) if self.conditioning == "tokens" else None
        self.blocks = nn.ModuleList([FiLMBlock(3, c1, 2, t, kernel=5), FiLMBlock(c1, c2, 2, t),
                                     FiLMBlock(c2, c3, 1, t), FiLMBlock(c3, c4, 2, t)])
        self.state_proj = nn.Sequential(nn.Linear(self.state_dim, STATE_FEATURES), nn.LayerNorm(STATE_FEATURES))
        features = 3 * c4 + STATE_FEATURES + t
        self.trunk = nn.Sequential(
            nn.Linear(features, self.hidden_dim), nn.LayerNorm(self.hidden_dim), nn.GELU(),
            nn.Linear(self.hidden_dim, self.hidden_dim), nn.GELU(),
        )

    # -- forward -------------------------------------------------------------------
    def _text_features(self, strings: list[str], device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The instruction feature ``[B, t]`` and the FiLM input of each block."""
        pooled, tokens = self.text_encoder(strings, device, tokens=self.token_attention is not None)
        if self._noise > 0:
            # isotropic noise of norm ~std on the unit sentence embedding, renormalised: rewordings sit at
            # cosine 0.8-0.95 from the trained phrasings, so the trunk learns to map that neighbourhood alike
            z = torch.randn_like(pooled) / pooled.shape[-1] ** 0.5
            pooled = F.normalize(pooled + self._noise * z, dim=-1)
        text = self.text_proj(pooled)
        if self.token_attention is None:
            return text, [text] * len(self.blocks)
        attended = self.token_attention(tokens)  # [B, 4, t]
        return text, [text + attended[:, i] for i in range(len(self.blocks))]

    def _observation_features(self, tensordict: TensorDictBase) -> ObservationFeatures:
        """The trunk's pass over a batch of observations (any batch shape, flattened)."""
        image = self._get_image(tensordict)
        batch_shape = image.shape[:-3]
        image = image.reshape(-1, *image.shape[-3:])
        x = (image.float() / 255.0 - 0.5) / 0.25 if image.dtype == torch.uint8 else image.float()
        text, films = self._text_features(instruction_strings(self._get_instruction(tensordict), x.shape[0]),
                                          x.device)
        for block, film in zip(self.blocks, films, strict=True):
            x = block(x, film)
        vision = torch.cat([spatial_softmax(x), x.mean((2, 3))], dim=1)
        state = self.state_proj(self._get_state(tensordict).reshape(x.shape[0], -1).float())
        hidden = self.trunk(torch.cat([vision, state, text], dim=1))
        return ObservationFeatures(batch_shape, x, text, state, hidden)

    @contextlib.contextmanager
    def instruction_noise(self, std: float):
        """Gaussian noise of norm ~``std`` on the sentence embedding of every forward in the block."""
        before, self._noise = self._noise, float(std)
        try:
            yield
        finally:
            self._noise = before

    # -- its policy directory ---------------------------------------------------------------
    def _owns_encoder(self) -> bool:
        """Whether the directory gets a copy of the encoder: a local one may not exist on another
        machine, and a tuned one is ours (the packaged default is referenced: every install has it)."""
        return self.text_encoder.source != DEFAULT_ENCODER or self.text_encoder.tune_layers > 0

    def write_weights(self, path: Path) -> None:
        """``model.safetensors``, and the encoder under ``text_encoder/`` when the directory owns it."""
        save_state(self, path)
        if self._owns_encoder():
            self.text_encoder.model.save_pretrained(path / ENCODER_DIR)
            self.text_encoder.tokenizer.save_pretrained(path / ENCODER_DIR)

    def trunk_config(self) -> dict:
        """The trunk's ``vla_policy.json`` entries."""
        return dict(hidden_dim=self.hidden_dim, text_dim=self.text_dim, channels=list(self.channels),
                    conditioning=self.conditioning, text_tune_layers=self.text_encoder.tune_layers,
                    text_encoder=ENCODER_DIR if self._owns_encoder() else self.text_encoder.source)


def _stored_encoder(source: PolicyDirectory) -> str | None:
    """The encoder a policy directory names: the packaged default, its own copy, or a path."""
    encoder = source.meta.get("text_encoder", DEFAULT_ENCODER)
    if encoder == DEFAULT_ENCODER:
        return None
    return str(source.path / encoder) if encoder == ENCODER_DIR else encoder


#: the trunk's sizes a policy directory fixes: constructor argument -> ``vla_policy.json`` key
TRUNK_SIZES = {"hidden_dim": "hidden_dim", "text_dim": "text_dim", "channels": "channels",
               "conditioning": "conditioning", "text_tune_layers": "text_tune_layers"}

__all__ = ["CONDITIONINGS", "FiLMBlock", "ObservationFeatures", "ReadingTrunk", "TRUNK_SIZES", "TokenAttention",
           "spatial_softmax"]
