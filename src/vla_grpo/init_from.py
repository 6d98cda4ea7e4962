"""Starting a policy from a Lightning checkpoint's policy weights: ``--model.init_from`` and the SFT stage.

:func:`init_from_checkpoint` is the one place a ``.ckpt`` (SFT or GRPO) starts a
policy: ``GRPOModule`` and ``SFTModule`` call it for ``init_from``, and
``GRPOModule`` for its SFT stage's checkpoint. :func:`load_policy_weights` is
the strict load under it, for scripts that export or inspect a checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

#: where a LightningModule of ours keeps its policy (``self.policy``): the prefix of its weights
POLICY_PREFIX = "policy."


def policy_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``policy.*`` weights of a ``.ckpt`` file, prefix stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`--model.init_from`: no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a corrupt file
        raise ValueError(f"`--model.init_from`: {path} is not a readable checkpoint ({type(err).__name__})") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"`--model.init_from`: {path} has no 'state_dict' (expected a Lightning .ckpt)")
    weights = {k[len(POLICY_PREFIX):]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    if not weights:
        raise ValueError(f"`--model.init_from`: {path} holds no 'policy.*' weights")
    return weights


def load_policy_weights(policy: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint's policy weights (and its action-normalization stats) strictly."""
    weights = policy_state_dict(path)
    own = policy.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if keys
        )
        raise ValueError(f"`--model.init_from`: {path} does not fit the configured policy ({detail})")
    policy.load_state_dict(weights)


def init_from_checkpoint(policy: torch.nn.Module, path: str | Path | None) -> None:
    """Start ``policy`` from ``path``'s policy weights and action normalization; nothing when ``path``
    is None or empty. The policy is then ``pretrained``: SFT keeps its normalization and head."""
    if not path:
        return
    load_policy_weights(policy, path)
    policy.pretrained = True


__all__ = ["POLICY_PREFIX", "init_from_checkpoint", "load_policy_weights", "policy_state_dict"]
