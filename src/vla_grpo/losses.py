"""Swappable losses, one class per objective: GRPO's policy losses and SFT's imitation losses.

Every loss follows TorchRL's loss contract: it returns a TensorDict whose
``loss_*`` entries the trainer sums and whose other entries are logged
(``clip_fraction``, ``approx_kl``, ``entropy``, ``ratio``). A policy loss
(:class:`PolicyLoss` and subclasses, ``forward(td)``) is GRPO's; an imitation
loss (:class:`ImitationLoss`, ``forward(policy, batch)``) is SFT's, and each
policy names its own (``policy.imitation_loss()``). Pick one in YAML::

    model:
      loss:
        class_path: vla_grpo.losses.GRPOLoss
        init_args: {clip_low: 0.2, clip_high: 0.28}

or on the command line with ``--model.loss=vla_grpo.losses.CISPOLoss`` (on the SFT
module, ``--model.loss=vla_grpo.losses.TokenBCLoss`` or ``FlowMatchingLoss`` overrides the policy's own).

Policy-loss inputs (a batch ``[B]`` of policy decisions, each ``H x A`` action tokens):
``log_probs`` (current weights, with grad) and ``("vla_action", "log_probs")``
(rollout policy), both ``[B, H, A]`` and at the same temperature;
``advantage`` ``[B, 1]``; ``trajectory_num_tokens`` ``[B, 1]`` (``|a_i|``, the
token count of the whole trajectory the decision belongs to); optionally
``entropy`` ``[B, H, A]``, ``ref_log_probs`` (for ``kl_coef > 0``) and
``group_return_std`` (Dr.GRPO).

Why not ``torchrl.objectives.ClipPPOLoss``: it owns the actor call and reduces
the objective with a plain mean. The recipe needs per-token weights
(per-trajectory mean, Dr.GRPO's constant normaliser), a per-decision
(sequence-level) ratio for GSPO and a stop-gradient weight for CISPO, and the
trainer computes log-probs once for the loss and the metrics. So the
objectives below are written on log-prob tensors; ``tests/test_losses.py``
checks :class:`PPOClipLoss` against ``ClipPPOLoss`` on the same inputs so a
divergence from upstream shows up.

Aggregation (how token terms become one number), per class:

* ``trajectory_mean`` (:class:`GRPOLoss`, the design's formula): mean over
  trajectories of each trajectory's token mean, ``1/N Σ_i 1/|a_i| Σ_t``. In a
  minibatch holding parts of trajectories it is the ``1/|a_i|``-weighted mean.
* ``token_mean`` (:class:`DAPOLoss`, :class:`PPOClipLoss`, :class:`CISPOLoss`):
  every token of the minibatch weighs the same.
* ``constant`` (:class:`DrGRPOLoss`): token sum over ``N * norm_tokens``.
* ``decision_mean`` (:class:`GSPOLoss`): mean over decisions of a
  per-decision objective.

Imitation losses (:class:`TokenBCLoss` for token heads, :class:`FlowMatchingLoss` for
flow-matching heads) take the policy and a batch of demo windows, see :class:`ImitationLoss`.
A flow head's log-probs are per denoising step (and chunk coordinate) on the same
"token" axis, ``[B, K, H*A]`` (:mod:`vla_grpo.policies.flow`), so every policy loss
above runs on it unchanged.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from vla_grpo.keys import (
    ACTION_CHUNK_KEY,
    ACTION_TOKENS_KEY,
    ADVANTAGE_KEY,
    ENTROPY_KEY,
    GROUP_STD_KEY,
    LOG_PROBS_KEY,
    PAD_KEY,
    REF_LOG_PROBS_KEY,
    SAMPLE_LOG_PROBS_KEY,
    TRAJ_TOKENS_KEY,
)

_AGGREGATIONS = ("trajectory_mean", "token_mean", "constant")


def _check(name: str, value: float, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"`--model.loss.init_args.{name}` must be {expected} (got {value})")


class PolicyLoss(nn.Module):
    """Token-level clipped surrogate ``min(r A, clip(r, 1-clip_low, 1+clip_high) A)``.

    Args:
        clip_low: lower clip range, ``r >= 1 - clip_low``.
        clip_high: upper clip range, ``r <= 1 + clip_high`` (clip-higher when > clip_low).
        kl_coef: weight of a k3 KL penalty to a frozen reference policy (0 = no KL,
            the SimpleVLA-RL setting); > 0 makes the trainer keep a reference copy.
        aggregation: ``trajectory_mean``, ``token_mean`` or ``constant`` (see module doc).
    """

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        kl_coef: float = 0.0,
        aggregation: str = "token_mean",
    ) -> None:
        super().__init__()
        _check("clip_low", clip_low, 0 <= clip_low <= 1, "in [0, 1]")
        _check("clip_high", clip_high, clip_high >= 0, ">= 0")
        _check("kl_coef", kl_coef, kl_coef >= 0, ">= 0")
        _check("aggregation", aggregation, aggregation in _AGGREGATIONS, f"one of {_AGGREGATIONS}")
        self.clip_low = float(clip_low)
        self.clip_high = float(clip_high)
        self.kl_coef = float(kl_coef)
        self.aggregation = aggregation

    @property
    def needs_reference(self) -> bool:
        """Whether the trainer must provide ``ref_log_probs``."""
        return self.kl_coef > 0

    # -- pieces subclasses override ------------------------------------------
    def advantage(self, td: TensorDictBase) -> torch.Tensor:
        """Per-decision advantage ``[B, 1, 1]``, broadcast over the tokens."""
        return td.get(ADVANTAGE_KEY).reshape(-1, 1, 1)

    def objective(self, log_ratio: torch.Tensor, adv: torch.Tensor, td: TensorDictBase) -> torch.Tensor:
        """Per-token objective to maximise, ``[B, H, A]``."""
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - self.clip_low, 1 + self.clip_high)
        return torch.minimum(ratio * adv, clipped * adv)

    def aggregate(self, x: torch.Tensor, td: TensorDictBase) -> torch.Tensor:
        """Reduce per-token values ``[B, H, A]`` to a scalar (see module doc)."""
        if self.aggregation == "token_mean":
            return x.mean()
        weight = 1.0 / td.get(TRAJ_TOKENS_KEY).reshape(-1, 1, 1).to(x.dtype)
        num_traj = (weight * torch.ones_like(x)).sum()
        if self.aggregation == "trajectory_mean":
            return (weight * x).sum() / num_traj
        return x.sum() / (num_traj * self.norm_tokens(td))

    def norm_tokens(self, td: TensorDictBase) -> float:
        """Dr.GRPO's constant normaliser (overridden there)."""
        raise NotImplementedError

    # -- the contract --------------------------------------------------------
    def forward(self, td: TensorDictBase) -> TensorDict:
        log_probs = td.get(LOG_PROBS_KEY)
        log_ratio = log_probs - td.get(SAMPLE_LOG_PROBS_KEY).detach()
        adv = self.advantage(td).to(log_probs.dtype)
        objective = self.objective(log_ratio, adv, td)
        out = TensorDict({"loss_objective": -self.aggregate(objective, td)}, batch_size=[])
        if self.needs_reference:
            ref_diff = td.get(REF_LOG_PROBS_KEY).detach() - log_probs
            k3 = ref_diff.exp() - ref_diff - 1
            out["loss_kl"] = self.kl_coef * self.aggregate(k3, td)
        out.update(self._metrics(log_ratio.detach(), td))
        return out

    def _metrics(self, log_ratio: torch.Tensor, td: TensorDictBase) -> dict[str, torch.Tensor]:
        ratio = log_ratio.exp()
        clipped = (ratio < 1 - self.clip_low) | (ratio > 1 + self.clip_high)
        metrics = {
            "clip_fraction": clipped.float().mean(),
            # k3 estimator of KL(old || new): unbiased and always >= 0
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "ratio": ratio.mean(),
        }
        entropy = td.get(ENTROPY_KEY, None)
        if entropy is not None:
            metrics["entropy"] = entropy.detach().mean()
        return metrics


class GRPOLoss(PolicyLoss):
    """SimpleVLA-RL's GRPO: clip-higher (0.2 / 0.28), no KL, per-trajectory token mean.

    ``1/N Σ_i 1/|a_i| Σ_t min(r A_i, clip(r, 0.8, 1.28) A_i)``.
    """

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.28, kl_coef: float = 0.0,
                 aggregation: str = "trajectory_mean") -> None:
        super().__init__(clip_low, clip_high, kl_coef, aggregation)


class DAPOLoss(PolicyLoss):
    """DAPO: clip-higher with token-level aggregation (every token weighs the same)."""

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.28, kl_coef: float = 0.0,
                 aggregation: str = "token_mean") -> None:
        super().__init__(clip_low, clip_high, kl_coef, aggregation)


class PPOClipLoss(PolicyLoss):
    """Symmetric PPO clip (0.2 / 0.2), token mean: the clip-higher ablation's baseline."""

    def __init__(self, clip_epsilon: float = 0.2, kl_coef: float = 0.0,
                 aggregation: str = "token_mean") -> None:
        super().__init__(clip_epsilon, clip_epsilon, kl_coef, aggregation)


class DrGRPOLoss(PolicyLoss):
    """Dr.GRPO: no std division in the advantage and no per-length normalisation.

    Advantage ``R_i - mean_G`` (the std that the group transform divided by is
    multiplied back); token terms summed and divided by ``N * norm_tokens``, a
    constant. ``norm_tokens=None`` uses the longest trajectory of the minibatch.
    """

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.28, kl_coef: float = 0.0,
                 norm_tokens: int | None = None) -> None:
        super().__init__(clip_low, clip_high, kl_coef, "constant")
        if norm_tokens is not None:
            _check("norm_tokens", norm_tokens, norm_tokens >= 1, ">= 1")
        self._norm_tokens = norm_tokens

    def advantage(self, td: TensorDictBase) -> torch.Tensor:
        # MCAdvantage divides by std.clamp_min(1e-6): multiply the same back
        std = td.get(GROUP_STD_KEY).reshape(-1, 1, 1).clamp_min(1e-6)
        return super().advantage(td) * std

    def norm_tokens(self, td: TensorDictBase) -> float:
        if self._norm_tokens is not None:
            return float(self._norm_tokens)
        return float(td.get(TRAJ_TOKENS_KEY).max())


class GSPOLoss(PolicyLoss):
    """GSPO: one length-normalised ratio per sequence, clipped per sequence.

    A *sequence* here is one policy decision (the H x A tokens of an action
    chunk, emitted by one call): ``s = exp(mean_t log r_t)``, objective
    ``min(s A, clip(s, 1-clip_low, 1+clip_high) A)`` averaged over decisions.
    GSPO's clip ranges are tiny because ``s`` is a geometric mean.
    """

    def __init__(self, clip_low: float = 3e-4, clip_high: float = 4e-4, kl_coef: float = 0.0) -> None:
        super().__init__(clip_low, clip_high, kl_coef, "token_mean")

    def objective(self, log_ratio: torch.Tensor, adv: torch.Tensor, td: TensorDictBase) -> torch.Tensor:
        seq_log_ratio = log_ratio.flatten(1).mean(-1).reshape(-1, 1, 1)
        # token_mean over [B, 1, 1] is the mean over decisions
        return super().objective(seq_log_ratio, adv, td)

    def _metrics(self, log_ratio: torch.Tensor, td: TensorDictBase) -> dict[str, torch.Tensor]:
        metrics = super()._metrics(log_ratio, td)
        seq_ratio = log_ratio.flatten(1).mean(-1).exp()
        metrics["clip_fraction"] = ((seq_ratio < 1 - self.clip_low) | (seq_ratio > 1 + self.clip_high)).float().mean()
        return metrics


class CISPOLoss(PolicyLoss):
    """CISPO (MiniMax-M1): clip the importance weight, never the gradient.

    ``sg(clip(r, 1-clip_low, 1+clip_high)) * A * log π(a_t)``, token mean: every
    token keeps a gradient, unlike PPO-clip which zeroes clipped tokens.
    ``clip_low=1`` (default) leaves the weight unbounded below, as in the paper.
    """

    def __init__(self, clip_low: float = 1.0, clip_high: float = 0.28, kl_coef: float = 0.0,
                 aggregation: str = "token_mean") -> None:
        super().__init__(clip_low, clip_high, kl_coef, aggregation)

    def objective(self, log_ratio: torch.Tensor, adv: torch.Tensor, td: TensorDictBase) -> torch.Tensor:
        weight = log_ratio.exp().clamp(1 - self.clip_low, 1 + self.clip_high).detach()
        return weight * adv * td.get(LOG_PROBS_KEY)


LOSSES = (GRPOLoss, DAPOLoss, PPOClipLoss, DrGRPOLoss, GSPOLoss, CISPOLoss)


# -- imitation (SFT) losses ------------------------------------------------------------
class ImitationLoss(nn.Module):
    """SFT's loss contract: ``forward(policy, batch) -> TensorDict`` of ``loss_*`` terms and metrics.

    ``batch`` is ``[B]`` demo windows: the observation, the demo's continuous actions
    ``("vla_action", "chunk")`` ``[B, H, A]`` and ``action_is_pad`` ``[B, H]`` (chunk steps past
    the episode's end, to leave out). The SFT module sums the ``loss_*`` entries into
    ``train/loss`` and logs the others as ``train/<name>``. The policy is an argument, not a
    member: the SFT module owns it, and a loss holding it would register its weights twice.
    """

    def forward(self, policy: nn.Module, batch: TensorDictBase) -> TensorDict:
        raise NotImplementedError


class TokenBCLoss(ImitationLoss):
    """Behaviour cloning of a token head: cross-entropy of the demo chunk's action tokens.

    Targets are ``policy.encode_actions(chunk)`` (under the policy's action normalization),
    log-probs ``policy.score`` (at the policy's temperature: SFT sets 1.0); the loss is their
    negative mean over the tokens of un-padded chunk steps. Metrics: ``entropy`` and
    ``token_likelihood`` (the mean probability of the demo's tokens).

    Why not ``torchrl.objectives.BCLoss``: it calls the actor itself, through a copy of its
    weights registered in the loss (saved twice in a checkpoint), while our policies are
    scored through their contract (``policy.score``, the log-probs GRPO uses too); and its
    cross-entropy reads the class dimension second, where a token head's logits are
    ``[B, H, A, V]``.
    """

    def forward(self, policy: nn.Module, batch: TensorDictBase) -> TensorDict:
        batch.set(ACTION_TOKENS_KEY, policy.encode_actions(batch.get(ACTION_CHUNK_KEY)))
        log_probs, entropy = policy.score(batch)  # [B, H, A]
        weight = (~batch.get(PAD_KEY)).to(log_probs.dtype).unsqueeze(-1).expand_as(log_probs)
        count = weight.sum().clamp_min(1)
        return TensorDict({
            "loss_bc": -(log_probs * weight).sum() / count,
            "entropy": (entropy.detach() * weight).sum() / count,
            "token_likelihood": (log_probs.detach().exp() * weight).sum() / count,
        }, batch_size=[])


TIME_SAMPLINGS = ("beta", "uniform")


class FlowMatchingLoss(ImitationLoss):
    """Flow matching for a flow head (π0's objective): regress the straight path's velocity.

    For a demo chunk ``a`` (in the policy's coordinates, ``policy.normalize_actions``), noise
    ``ε ~ N(0, I)`` and a time ``t``: ``x_t = t ε + (1 - t) a`` and the target velocity is
    ``ε - a`` (π0's convention, ``t = 1`` is noise). The loss is the squared error of
    ``policy.predict_velocity`` per coordinate, averaged over un-padded chunk steps.
    Metrics: ``velocity_error`` (the same mean) and ``action_error`` (the mean squared error of the
    one-step action estimate ``x_t - t v``, which the ODE refines).

    Args:
        time_sampling: ``"beta"`` (π0: ``t = 0.001 + 0.999 Beta(1.5, 1)``, more weight on the noisy
            end, where the chain's first steps decide the mode) or ``"uniform"``.
        noise_samples: ``(t, ε)`` draws per demo window; the observation is encoded once for all.
    """

    def __init__(self, time_sampling: str = "beta", noise_samples: int = 1) -> None:
        super().__init__()
        _check("time_sampling", time_sampling, time_sampling in TIME_SAMPLINGS, f"one of {TIME_SAMPLINGS}")
        _check("noise_samples", noise_samples, noise_samples >= 1, ">= 1")
        self.time_sampling = time_sampling
        self.noise_samples = int(noise_samples)

    def _times(self, n: int, device: torch.device) -> torch.Tensor:
        shape = (n, self.noise_samples)
        if self.time_sampling == "uniform":
            return torch.rand(shape, device=device)
        beta = torch.distributions.Beta(torch.tensor(1.5, device=device), torch.tensor(1.0, device=device))
        return 0.001 + 0.999 * beta.sample(shape)

    def forward(self, policy: nn.Module, batch: TensorDictBase) -> TensorDict:
        actions = policy.normalize_actions(batch.get(ACTION_CHUNK_KEY).float()).unsqueeze(1)  # [B, 1, H, A]
        t = self._times(actions.shape[0], actions.device)  # [B, S]
        noise = torch.randn(actions.shape[0], self.noise_samples, *actions.shape[2:], device=actions.device)
        tt = t[..., None, None]
        x = tt * noise + (1 - tt) * actions
        velocity = policy.predict_velocity(batch, x, t)  # [B, S, H, A]
        weight = (~batch.get(PAD_KEY)).to(velocity.dtype)[:, None, :, None].expand_as(velocity)
        count = weight.sum().clamp_min(1)
        loss = ((velocity - (noise - actions)) ** 2 * weight).sum() / count
        action_error = ((x - tt * velocity - actions).detach() ** 2 * weight).sum() / count
        return TensorDict({"loss_flow": loss, "velocity_error": loss.detach(), "action_error": action_error},
                          batch_size=[])


IMITATION_LOSSES = (TokenBCLoss, FlowMatchingLoss)
