"""TorchRL's ``TinyVLA`` with a token head, as the CPU default policy."""
from __future__ import annotations

from pathlib import Path

import torch
from tensordict import NonTensorStack, TensorDict
from torchrl.modules.vla import TinyVLA

from vla_grpo.policies.base import TokenPolicyMixin
from vla_grpo.policies.pretrained import (
    load_state,
    open_policy_dir,
    optional_path,
    save_state,
    write_policy_json,
)


class TinyVLAPolicy(TokenPolicyMixin, TinyVLA):
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
        pretrained_path = optional_path(pretrained_path)
        meta = open_policy_dir(pretrained_path, type(self), action_dim=action_dim, chunk_size=chunk_size,
                               state_dim=state_dim, image_size=image_size)
        if meta is not None:
            hidden_dim, vocab_size = int(meta["hidden_dim"]), int(meta["num_bins"])
        for name, value in (("action_dim", action_dim), ("chunk_size", chunk_size),
                            ("state_dim", state_dim), ("image_size", image_size),
                            ("vocab_size", vocab_size)):
            if value < 1:
                raise ValueError(f"`policy.{name}` must be >= 1 (got {value})")
        super().__init__(
            action_dim=action_dim,
            chunk_size=chunk_size,
            action_head="tokens",
            vocab_size=vocab_size,
            hidden_dim=hidden_dim,
            log_probs_mode="token",
            output_mode="both",
            return_vla_action_container=False,
        )
        self.state_dim = int(state_dim)
        self.image_size = int(image_size)
        self._init_token_policy(action_dim, vocab_size, temperature)
        self._materialize()
        if meta is not None:
            load_state(self, Path(pretrained_path), meta)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``vla_policy.json`` + ``model.safetensors`` (weights and action stats); returns the directory."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_state(self, path)
        write_policy_json(path, self, hidden_dim=self.hidden_dim)
        return path


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
