"""A small VLA that reads: the reading trunk (frozen sentence encoder, FiLM-conditioned conv) with a token head.

One forward pass: the trunk (:mod:`vla_grpo.policies.trunk`: instruction ->
FiLM-conditioned vision + state -> hidden [hidden_dim]) -> Linear -> logits
[H, A, V], V action bins per dimension (OpenVLA's tokens, 32 bins by default).

The encoder is not part of the policy's weights unless ``text_tune_layers > 0``:
checkpoints hold the trunk and head only (a few MB), and a policy directory records which
encoder to load (the packaged default, or a local path).
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.modules.vla import VLAWrapperBase

from vla_grpo.policies.base import TokenPolicyMixin
from vla_grpo.policies.pretrained import PretrainedPolicy, check_sizes
from vla_grpo.policies.trunk import CONDITIONINGS, TRUNK_SIZES, ReadingTrunk, spatial_softmax


class ReadingVLAPolicy(ReadingTrunk, PretrainedPolicy, TokenPolicyMixin, VLAWrapperBase):
    """The CPU VLA that reads its instruction: frozen sentence encoder, FiLM-conditioned conv trunk, token head.

    Args:
        action_dim: action dimensions of the suite.
        chunk_size: actions per decision (executed open-loop).
        state_dim: proprio state size of the suite.
        image_size: side of the suite's square images.
        vocab_size: action bins per dimension.
        hidden_dim: width of the MLP trunk.
        channels: conv widths of the four blocks.
        text_dim: width of the instruction feature that drives FiLM.
        conditioning: ``"pooled"`` (FiLM from the sentence embedding) or
            ``"tokens"`` (FiLM from attention over the encoder's token features).
        text_encoder: a local transformers encoder directory; None: the packaged all-MiniLM-L6-v2.
        text_tune_layers: train the encoder's top layers (0: frozen, cached per string).
        temperature: softmax temperature for sampling *and* scoring.
        pretrained_path: a directory from :meth:`save_pretrained` to load; its sizes win,
            its suite dimensions must equal the configured ones.
    """

    # its directory: vla_policy.json + model.safetensors (+ text_encoder/ when the encoder is its own)
    stored_sizes = {"vocab_size": "num_bins", **TRUNK_SIZES}

    def __init__(
        self,
        action_dim: int = 7,
        chunk_size: int = 8,
        state_dim: int = 8,
        image_size: int = 64,
        vocab_size: int = 32,
        hidden_dim: int = 512,
        channels: tuple[int, int, int, int] = (16, 32, 32, 32),  # narrow: it acts at every decision (docs/experiments/reading_policy.md)
        text_dim: int = 128,
        conditioning: str = "pooled",
        text_encoder: str | None = None,
        text_tune_layers: int = 0,
        temperature: float = 1.0,
        pretrained_path: str | None = None,
    ) -> None:
        source, cfg = self.open_pretrained(
            pretrained_path, action_dim=action_dim, chunk_size=chunk_size, state_dim=state_dim, image_size=image_size,
            vocab_size=vocab_size, hidden_dim=hidden_dim, text_dim=text_dim, channels=channels,
            conditioning=conditioning, text_tune_layers=text_tune_layers)
        text_encoder = self._encoder_spec(source, text_encoder)
        check_sizes(action_dim=action_dim, chunk_size=chunk_size, state_dim=state_dim, image_size=image_size,
                    vocab_size=cfg.vocab_size, hidden_dim=cfg.hidden_dim, text_dim=cfg.text_dim)
        super().__init__(action_dim=action_dim, chunk_size=chunk_size, action_head="tokens", vocab_size=cfg.vocab_size,
                         log_probs_mode="token", output_mode="both", return_vla_action_container=False)
        self._init_trunk(cfg, state_dim, image_size, text_encoder)
        self.head = nn.Linear(self.hidden_dim, self.chunk_size * self.action_dim * self.vocab_size)
        self._init_token_policy(action_dim, cfg.vocab_size, temperature)
        self.load_pretrained(source)

    def _predict(self, tensordict: TensorDictBase) -> torch.Tensor:
        features = self._observation_features(tensordict)
        return self.head(features.hidden).reshape(*features.batch_shape, -1)

    def set_token_prior(self, log_prior: torch.Tensor) -> bool:
        """The bias of the ``[H * A * V]`` head becomes the demos' token prior."""
        with torch.no_grad():
            self.head.bias.copy_(log_prior.reshape(-1).to(self.head.bias))
        return True

    def policy_config(self) -> dict:
        return self.trunk_config()


__all__ = ["CONDITIONINGS", "ReadingVLAPolicy", "spatial_softmax"]
