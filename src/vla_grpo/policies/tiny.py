"""TorchRL's ``TinyVLA`` with a token head, as the CPU default policy."""
from __future__ import annotations

from pathlib import Path

import torch
from tensordict import NonTensorStack, TensorDict
from torchrl.modules.vla import TinyVLA

from vla_grpo.policies.base import TokenPolicyMixin
from vla_grpo.policies.pretrained import (
    check_dims,
    load_action_stats,
    optional_path,
    read_policy_dir,
    write_policy_json,
)

_WEIGHTS = "model.safetensors"


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
        meta = None
        if pretrained_path is not None:
            meta = read_policy_dir(pretrained_path, type(self), (_WEIGHTS,))
            check_dims(pretrained_path, meta, action_dim=action_dim, chunk_size=chunk_size,
                       state_dim=state_dim, image_size=image_size)
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
            self._load_weights(Path(pretrained_path), meta)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``vla_policy.json`` + ``model.safetensors`` (weights and action stats); returns the directory."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # clone: the tokenizer's bounds alias action_low/high, which safetensors refuses to write
        state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        save_file(state, path / _WEIGHTS)
        write_policy_json(path, self, hidden_dim=self.hidden_dim)
        return path

    def _load_weights(self, path: Path, meta: dict) -> None:
        from safetensors.torch import load_file

        try:
            self.load_state_dict(load_file(path / _WEIGHTS))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"`policy.pretrained_path`: {path / _WEIGHTS} does not fit "
                             f"({str(err).strip().splitlines()[0]})") from None
        load_action_stats(self, meta)

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
