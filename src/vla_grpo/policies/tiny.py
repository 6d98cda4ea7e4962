"""TorchRL's ``TinyVLA`` with a token head, as the CPU default policy."""
from __future__ import annotations

import torch
from tensordict import NonTensorStack, TensorDict
from torchrl.modules.vla import TinyVLA

from vla_grpo.policies.base import TokenPolicyMixin
from vla_grpo.policies.pretrained import PretrainedPolicy, check_sizes


class TinyVLAPolicy(PretrainedPolicy, TokenPolicyMixin, TinyVLA):
    """A small conv + MLP VLA with 256-bin action tokens (``TinyVLA(action_head="tokens")``).

    Args:
        action_dim: action dimensions of the suite.
        chunk_size: actions per decision (executed open-loop).
        state_dim: proprio state size of the suite.
        image_size: side of the square camera image of the suite.
        vocab_size: action bins per dimension (OpenVLA: 256).
        hidden_dim: width of the fused trunk.
        temperature: softmax temperature for sampling *and* scoring.
        pretrained_path: a directory from :meth:`save_pretrained` to load; its
            ``hidden_dim``/``vocab_size`` win, its suite dimensions must equal the configured ones.
    """

    # its directory: vla_policy.json + model.safetensors (weights and action stats)
    stored_sizes = {"vocab_size": "num_bins", "hidden_dim": "hidden_dim"}

    def __init__(
        self,
        action_dim: int = 7,
        chunk_size: int = 8,
        state_dim: int = 9,
        image_size: int = 128,
        vocab_size: int = 256,
        hidden_dim: int = 128,
        temperature: float = 1.0,
        pretrained_path: str | None = None,
    ) -> None:
        source, cfg = self.open_pretrained(pretrained_path, action_dim=action_dim, chunk_size=chunk_size,
                                           state_dim=state_dim, image_size=image_size, vocab_size=vocab_size,
                                           hidden_dim=hidden_dim)
        check_sizes(action_dim=action_dim, chunk_size=chunk_size, state_dim=state_dim, image_size=image_size,
                    vocab_size=cfg.vocab_size)
        super().__init__(
            action_dim=action_dim,
            chunk_size=chunk_size,
            action_head="tokens",
            vocab_size=cfg.vocab_size,
            hidden_dim=cfg.hidden_dim,
            log_probs_mode="token",
            output_mode="both",
            return_vla_action_container=False,
        )
        self.state_dim = int(state_dim)
        self.image_size = int(image_size)
        self._init_token_policy(action_dim, cfg.vocab_size, temperature)
        self._materialize()
        self.load_pretrained(source)

    def policy_config(self) -> dict:
        return {"hidden_dim": self.hidden_dim}

    def set_token_prior(self, log_prior: torch.Tensor) -> bool:
        """The bias of TinyVLA's ``[H * A * V]`` output layer (``head``) becomes the prior."""
        with torch.no_grad():
            self.head.bias.copy_(log_prior.reshape(-1).to(self.head.bias))
        return True

    def _materialize(self) -> None:
        """Run one dummy forward so TinyVLA's lazy layers get their shapes.

        Lazy parameters can't be handed to an optimizer, DDP or ``load_state_dict``.
        """
        dummy = TensorDict(
            {
                "observation": {
                    "image": torch.zeros(1, 3, self.image_size, self.image_size, dtype=torch.uint8),
                    "state": torch.zeros(1, self.state_dim),
                },
                "language_instruction": NonTensorStack("noop"),
            },
            batch_size=[1],
        )
        with torch.no_grad():
            self._predict(dummy)
