"""The reading VLA with a flow-matching action expert: the reading trunk conditions a velocity network.

The trunk (:mod:`vla_grpo.policies.trunk`: frozen sentence encoder,
FiLM-conditioned conv, state) encodes each observation once per decision; a
velocity network (:mod:`vla_grpo.policies.velocity`: ``"mlp"`` or the π0-style
``"expert"``) denoises the whole normalised ``H x A`` chunk in ``num_steps``
Euler steps; :class:`~vla_grpo.policies.flow.FlowPolicyMixin` makes it a GRPO
policy (Flow-SDE sampling with exact per-step log-probs, the ODE when greedy,
flow-matching SFT). The trunk's weights have the token reading VLA's names, so
``trunk_from`` can start it from a token base (``checkpoints/tabletop_base``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tensordict import TensorDictBase
from torchrl.modules.vla import VLAWrapperBase

from vla_grpo.policies.flow import FlowPolicyMixin
from vla_grpo.policies.pretrained import (
    POLICY_JSON,
    WEIGHTS_FILE,
    PretrainedPolicy,
    check_dims,
    check_sizes,
    optional_path,
    read_policy_dir,
)
from vla_grpo.policies.trunk import TRUNK_SIZES, ReadingTrunk
from vla_grpo.policies.velocity import build_velocity

#: Euler steps per decision on CPU: docs/experiments/flow.md measures 1..10 (π0 uses 10)
DEFAULT_NUM_STEPS = 4
#: the trunk's module names: what ``trunk_from`` copies
TRUNK_MODULES = ("text_proj.", "token_attention.", "blocks.", "state_proj.", "trunk.")


def _map_size(image_size: int) -> int:
    """Side of the trunk's last feature map: four convs, strides 2-2-1-2, 'same' padding."""
    return math.ceil(math.ceil(math.ceil(image_size / 2) / 2) / 2)


class FlowVLAPolicy(ReadingTrunk, PretrainedPolicy, FlowPolicyMixin, VLAWrapperBase):
    """The reading VLA with a flow-matching head: continuous chunks, Flow-SDE sampling, exact step log-probs.

    Args:
        action_dim, chunk_size, state_dim, image_size: the suite's dimensions.
        hidden_dim, channels, text_dim, conditioning, text_encoder, text_tune_layers: the reading
            trunk's, as in :class:`~vla_grpo.policies.ReadingVLAPolicy`.
        velocity: the velocity network, ``"mlp"`` or ``"expert"`` (π0-style transformer).
        velocity_width: its width (MLP width, or the expert's token width).
        velocity_depth: residual blocks (MLP) or transformer layers (expert).
        velocity_heads: the expert's attention heads.
        num_steps: Euler steps ``K`` per decision (π0: 10; here 4, measured on CPU).
        sigma: the Flow-SDE noise level (πRL's default is 0.5; 0.3 keeps sampled success near the
            greedy one here); the rollout temperature ``T`` makes it ``sigma * sqrt(T)``. Greedy
            decoding is the ODE whatever it is.
        temperature: scales each step's noise variance (GRPO sets its ``rollout_temperature``).
        log_prob_unit: ``"coordinate"`` (log-probs ``[B, K, H*A]``) or ``"step"`` (``[B, K, 1]``).
        trunk_from: a :class:`~vla_grpo.policies.ReadingVLAPolicy` (or flow) directory whose trunk
            weights start this policy's (same trunk sizes and state dim); the head starts fresh and
            the action normalization is left to SFT (the demos' statistics).
        pretrained_path: a directory from :meth:`save_pretrained` to load; its sizes win.
    """

    stored_sizes = {**TRUNK_SIZES, "velocity": "velocity", "velocity_width": "velocity_width",
                    "velocity_depth": "velocity_depth", "velocity_heads": "velocity_heads"}

    def __init__(
        self,
        action_dim: int = 7,
        chunk_size: int = 8,
        state_dim: int = 8,
        image_size: int = 64,
        hidden_dim: int = 512,
        channels: tuple[int, int, int, int] = (16, 32, 32, 32),
        text_dim: int = 128,
        conditioning: str = "pooled",
        text_encoder: str | None = None,
        text_tune_layers: int = 0,
        velocity: str = "mlp",
        velocity_width: int = 256,
        velocity_depth: int = 3,
        velocity_heads: int = 4,
        num_steps: int = DEFAULT_NUM_STEPS,
        sigma: float = 0.3,  # tabletop: sampled success 0.77 vs greedy 0.80; 0.5 (pi_RL's): 0.58 (docs/experiments/flow.md)
        temperature: float = 1.0,
        log_prob_unit: str = "coordinate",
        trunk_from: str | None = None,
        pretrained_path: str | None = None,
    ) -> None:
        source, cfg = self.open_pretrained(
            pretrained_path, action_dim=action_dim, chunk_size=chunk_size, state_dim=state_dim, image_size=image_size,
            hidden_dim=hidden_dim, text_dim=text_dim, channels=channels, conditioning=conditioning,
            text_tune_layers=text_tune_layers, velocity=velocity, velocity_width=velocity_width,
            velocity_depth=velocity_depth, velocity_heads=velocity_heads)
        trunk_from = optional_path(trunk_from)
        if source is not None and trunk_from is not None:
            raise ValueError("`policy.trunk_from` and `policy.pretrained_path` both give weights; give one")
        text_encoder = self._encoder_spec(source, text_encoder)
        check_sizes(action_dim=action_dim, chunk_size=chunk_size, state_dim=state_dim, image_size=image_size,
                    hidden_dim=cfg.hidden_dim, text_dim=cfg.text_dim, velocity_width=cfg.velocity_width,
                    velocity_depth=cfg.velocity_depth, velocity_heads=cfg.velocity_heads)
        super().__init__(action_dim=action_dim, chunk_size=chunk_size, action_head="continuous",
                         output_mode="chunk", return_vla_action_container=False)
        self._init_trunk(cfg, state_dim, image_size, text_encoder)
        self.velocity, self.velocity_width = cfg.velocity, int(cfg.velocity_width)
        self.velocity_depth, self.velocity_heads = int(cfg.velocity_depth), int(cfg.velocity_heads)
        self.velocity_net = build_velocity(
            cfg.velocity, chunk_size=chunk_size, action_dim=action_dim, hidden_dim=self.hidden_dim,
            text_dim=self.text_dim, vision_channels=self.channels[-1], map_size=_map_size(image_size),
            width=self.velocity_width, depth=self.velocity_depth, heads=self.velocity_heads)
        self._init_flow_policy(action_dim, num_steps, sigma, temperature, log_prob_unit)
        if trunk_from is not None:
            self._load_trunk(Path(trunk_from))
        self.load_pretrained(source)

    # -- the velocity model -----------------------------------------------------------------
    def flow_context(self, tensordict: TensorDictBase):
        return self.velocity_net.encode(self._observation_features(tensordict))

    def flow_velocity(self, x: torch.Tensor, t: torch.Tensor, context) -> torch.Tensor:
        return self.velocity_net(x, t, context)

    # -- starting from a token base's trunk ----------------------------------------------
    def _load_trunk(self, path: Path) -> None:
        """Copy the trunk weights of a reading policy directory (one line naming it when they don't fit)."""
        from safetensors.torch import load_file

        from vla_grpo.policies.reading import ReadingVLAPolicy

        classes = {cls.__name__: cls for cls in (ReadingVLAPolicy, FlowVLAPolicy)}
        try:
            meta = read_policy_dir(path, classes.get(_policy_class(path), ReadingVLAPolicy), (WEIGHTS_FILE,))
            check_dims(path, meta, state_dim=self.state_dim)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(str(err).replace("`policy.pretrained_path`", "`policy.trunk_from`")) from None
        mine = self.trunk_config()
        for key in ("hidden_dim", "text_dim", "channels", "conditioning"):
            if meta.get(key) != mine[key]:
                raise ValueError(f"`policy.trunk_from`: {path} has a trunk with {key}={meta.get(key)}, but "
                                 f"`policy.{key}` is {mine[key]}")
        weights = {k: v for k, v in load_file(path / WEIGHTS_FILE).items() if k.startswith(TRUNK_MODULES)}
        own = {k for k in self.state_dict() if k.startswith(TRUNK_MODULES)}
        if set(weights) != own:
            raise ValueError(f"`policy.trunk_from`: {path / WEIGHTS_FILE} holds other trunk weights "
                             f"({len(set(weights) ^ own)} names differ)")
        self.load_state_dict(weights, strict=False)

    def policy_config(self) -> dict:
        return dict(self.trunk_config(), velocity=self.velocity, velocity_width=self.velocity_width,
                    velocity_depth=self.velocity_depth, velocity_heads=self.velocity_heads)


def _policy_class(path: Path) -> str | None:
    """The class a policy directory names (None when unreadable: :func:`read_policy_dir` says why)."""
    try:
        return json.loads((path / POLICY_JSON).read_text()).get("policy_class")
    except (OSError, ValueError, AttributeError):
        return None


__all__ = ["DEFAULT_NUM_STEPS", "FlowVLAPolicy"]
