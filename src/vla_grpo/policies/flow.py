"""The flow-matching policy contract: any velocity network made an RL-able policy with exact chain log-probs.

A flow head generates the whole normalised ``H x A`` action chunk by integrating
a velocity field ``v(x, t | o)`` from noise (``t = 1``) to actions (``t = 0``)
in ``K`` Euler steps on the grid ``t_k = 1 - k/K``, π0's convention:
``x_t = t ε + (1 - t) a``, ``v ≈ ε - a``. :class:`FlowPolicyMixin` adds what
GRPO needs to such a policy.

**Sampling: Flow-SDE** (Flow-GRPO, Liu et al. 2025; πRL's Flow-SDE, Chen et al.
2025). Each denoising step is the Euler-Maruyama step of the SDE that has the
ODE's marginals, hence Gaussian::

    x̂_a = x - t v,   x̂_ε = x + (1 - t) v           (the step's action and noise estimates)
    σ_t = s sqrt(t / (1 - t))                        (1 - t at t = 1 read as 1/K, as πRL does)
    x' ~ N(x̂_a (1 - t') + x̂_ε (t' - σ_t² δ / (2 t)),  σ_t² δ),   t' = t - δ,  δ = 1/K

with ``s = sigma * sqrt(temperature)``. At ``s = 0`` the mean is the Euler step
``x - δ v``: greedy decoding is the deterministic ODE, started at the noise's
mean (``x_0 = 0``) so that it is reproducible.

Why Flow-SDE rather than a learned noise (ReinFlow; πRL's Flow-Noise): the
noise level is one number, so it plays the rollout temperature's role
(tempering a Gaussian, ``p^(1/T)``, multiplies its variance by ``T``: the
module's ``rollout_temperature`` scales each step's noise variance) and adds no
weights: an SFT checkpoint is RL-ready, the state dict is the velocity model's
alone, and nothing in SFT must train a noise head it never uses. The SDE keeps
the ODE's marginals (exactly as ``K`` grows), so the sampled actions stay the
distribution SFT fitted, widened around it, instead of a fixed noise added on
top of it. The step's variance does not depend on the weights, so the entropy
is analytic and constant, and the log-ratio only measures how the step means moved.

**The rollout record** (``vla_action``): ``chain`` ``[B, K+1, H, A]`` (``x_0`` =
the noise, ``x_K`` = the normalised actions), ``log_probs`` and ``chunk`` (the
de-normalised ``x_K``, clipped to the demos' q01/q99 like the token head's
bins). :meth:`FlowPolicyMixin.score` recomputes every step's mean from the
stored ``x_k`` under the current weights (all ``K`` steps in one velocity call).

**The log-prob axis** (the loss contract's "token" axis): ``[B, K, H*A]``, one
entry per denoising step and chunk coordinate (``log_prob_unit="coordinate"``:
each step's Gaussian is diagonal, so its density factorises over coordinates as
a token head's over its tokens, and every ratio is clipped at the same
granularity as a token's) or ``[B, K, 1]``, one per step (``"step"``: the
summed step density). ``tokens_per_decision`` is ``K*H*A`` or ``K``.
"""
from __future__ import annotations

import contextlib
import math

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType
from tensordict.nn.probabilistic import interaction_type

from vla_grpo.losses import FlowMatchingLoss, ImitationLoss

LOG_PROB_UNITS = ("coordinate", "step")
CHAIN_KEY = ("vla_action", "chain")
_LOG_PROBS_KEY = ("vla_action", "log_probs")
_CHUNK_KEY = ("vla_action", "chunk")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class FlowPolicyMixin:
    """GRPO-facing methods for a velocity-network policy (``VLAWrapperBase``, continuous head).

    A subclass provides the model, in two methods (a π0 or SmolVLA wrapper: docs/policies.md):

    * :meth:`flow_context`: encode ``N`` observations once per decision (π0: the VLM prefix's
      KV cache; here: the reading trunk's features), any object the velocity takes;
    * :meth:`flow_velocity`: ``v(x [N, S, H, A], t [N, S] | context) -> [N, S, H, A]`` at ``S``
      points per observation (1 while sampling; the ``K`` chain states while scoring).

    and calls :meth:`_init_flow_policy` in ``__init__`` after the base constructor.
    """

    #: ``vla_action`` entries the rollout records per decision (``chunk`` is what the env executes)
    action_record_keys = ("chain", "log_probs", "chunk")
    #: ``vla_action`` entries a trained decision keeps: the chain :meth:`score` reads, the sampling log-probs
    action_train_keys = ("chain", "log_probs")
    #: True once weights and action normalization come from a pretrained policy directory
    pretrained: bool = False

    def _init_flow_policy(self, action_dim: int, num_steps: int, sigma: float, temperature: float,
                          log_prob_unit: str = "coordinate") -> None:
        if num_steps < 1:
            raise ValueError(f"`policy.num_steps` must be >= 1 (got {num_steps})")
        if not sigma >= 0:
            raise ValueError(f"`policy.sigma` must be >= 0 (got {sigma})")
        if log_prob_unit not in LOG_PROB_UNITS:
            raise ValueError(f"`policy.log_prob_unit` must be one of {LOG_PROB_UNITS} (got {log_prob_unit!r})")
        self.num_steps, self.sigma, self.log_prob_unit = int(num_steps), float(sigma), log_prob_unit
        self.temperature = temperature
        self.register_buffer("action_low", -torch.ones(action_dim))
        self.register_buffer("action_high", torch.ones(action_dim))

    # -- the velocity model (subclasses) -------------------------------------------------
    def flow_context(self, tensordict: TensorDictBase):
        """What the velocity is conditioned on, for the ``N`` flattened observations of ``tensordict``."""
        raise NotImplementedError

    def flow_velocity(self, x: torch.Tensor, t: torch.Tensor, context) -> torch.Tensor:
        """``v(x, t | context)``: ``x [N, S, H, A]``, ``t [N, S]`` -> ``[N, S, H, A]``."""
        raise NotImplementedError

    def predict_velocity(self, tensordict: TensorDictBase, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity at ``S`` points ``x [N, S, H, A]``, ``t [N, S]`` of each observation (flow matching)."""
        return self.flow_velocity(x, t, self.flow_context(tensordict))

    # -- the noise level: sigma, tempered -----------------------------------------------
    @property
    def temperature(self) -> float:
        """Scales each denoising step's noise variance (tempering a Gaussian); GRPO sets it."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"`temperature` must be > 0 (got {value})")
        self._temperature = float(value)

    @property
    def rollout_sigma(self) -> float:
        """The SDE's noise level at sampling and scoring: ``sigma * sqrt(temperature)``."""
        return self.sigma * math.sqrt(self.temperature)

    # -- action normalization (the demos' q01/q99 -> [-1, 1], like the token head's bins) -------
    def set_action_stats(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Set per-dimension normalization bounds (e.g. demos' q01/q99)."""
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if low.shape != self.action_low.shape or high.shape != self.action_high.shape:
            raise ValueError(f"action stats must have shape {tuple(self.action_low.shape)} "
                             f"(got low {tuple(low.shape)}, high {tuple(high.shape)})")
        self.action_low.copy_(low)
        self.action_high.copy_(torch.maximum(high, low + 1e-4))  # a constant dimension keeps a nonzero width

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Continuous actions ``[..., A]`` -> the flow's coordinates (the bounds map to -1 and 1)."""
        return (actions - self.action_low) / (self.action_high - self.action_low) * 2 - 1

    def denormalize_actions(self, x: torch.Tensor) -> torch.Tensor:
        """Flow coordinates ``[..., A]`` -> continuous actions, clipped to the bounds."""
        return self.action_low + (x.clamp(-1, 1) + 1) / 2 * (self.action_high - self.action_low)

    # -- the SDE -------------------------------------------------------------------------
    def flow_times(self, device: torch.device | None = None) -> torch.Tensor:
        """The denoising grid ``t_k = 1 - k/K``, ``k = 0..K``."""
        return torch.linspace(1.0, 0.0, self.num_steps + 1, device=device)

    def step_gaussian(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
                      sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the step from ``x`` at time ``t`` (broadcast against ``x``) to ``t - 1/K``."""
        dt = 1.0 / self.num_steps
        t_next = (t - dt).clamp_min(0.0)
        noise_level = sigma * torch.sqrt(t / (1 - t).clamp_min(dt))
        mean = (x - t * v) * (1 - t_next) + (x + (1 - t) * v) * (t_next - noise_level ** 2 * dt / (2 * t))
        return mean, noise_level * math.sqrt(dt)

    @staticmethod
    def _gaussian_log_prob(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((y - mean) / std) ** 2 - torch.log(std) - _HALF_LOG_2PI

    def sample_chain(self, context, noise: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise ``noise [N, H, A]`` in ``K`` steps at noise level ``sigma``.

        Returns the chain ``[N, K+1, H, A]`` and each coordinate's step log-prob ``[N, K, H, A]``
        (zeros at ``sigma = 0``: the ODE, a deterministic chain).
        """
        times = self.flow_times(noise.device)
        x, chain, log_probs = noise, [noise], []
        for k in range(self.num_steps):
            t = times[k].expand(x.shape[0], 1)
            v = self.flow_velocity(x.unsqueeze(1), t, context).squeeze(1)
            mean, std = self.step_gaussian(x, v, times[k], sigma)
            # the chain is data (sampled, not reparameterised): each step's log-prob is of a fixed x'
            if sigma > 0:
                x = (mean + std * torch.randn_like(mean)).detach()
                log_probs.append(self._gaussian_log_prob(x, mean, std))
            else:
                x = mean.detach()
                log_probs.append(torch.zeros_like(x))
            chain.append(x)
        return torch.stack(chain, 1), torch.stack(log_probs, 1)

    def _token_axis(self, per_coordinate: torch.Tensor) -> torch.Tensor:
        """``[N, K, H, A]`` -> the loss contract's ``[N, K, H*A]`` (coordinate) or ``[N, K, 1]`` (step)."""
        flat = per_coordinate.flatten(2)
        return flat if self.log_prob_unit == "coordinate" else flat.sum(-1, keepdim=True)

    # -- the policy contract ---------------------------------------------------------------
    @property
    def tokens_per_decision(self) -> int:
        """Entries of :meth:`score`'s log-probs per decision."""
        per_step = self.chunk_size * self.action_dim if self.log_prob_unit == "coordinate" else 1
        return self.num_steps * per_step

    def act(self, tensordict: TensorDictBase, *, greedy: bool = False) -> TensorDictBase:
        """Sample a chunk through the SDE (greedy: the ODE from ``x_0 = 0``); writes chain, log-probs, chunk."""
        batch_shape = tensordict.batch_size
        context = self.flow_context(tensordict)
        shape = (math.prod(batch_shape), self.chunk_size, self.action_dim)
        device = self.action_low.device
        noise = torch.zeros(shape, device=device) if greedy else torch.randn(shape, device=device)
        chain, log_probs = self.sample_chain(context, noise, 0.0 if greedy else self.rollout_sigma)
        tensordict.set(CHAIN_KEY, chain.reshape(*batch_shape, *chain.shape[1:]))
        tensordict.set(_LOG_PROBS_KEY, self._token_axis(log_probs).reshape(*batch_shape, self.num_steps, -1))
        tensordict.set(_CHUNK_KEY, self.denormalize_actions(chain[:, -1]).reshape(*batch_shape, *shape[1:]))
        return tensordict

    def forward(self, tensordict: TensorDictBase, **kwargs) -> TensorDictBase:
        """TorchRL's interaction type picks sampling (``RANDOM``) or the ODE (otherwise)."""
        return self.act(tensordict, greedy=interaction_type() != InteractionType.RANDOM)

    def score(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies of the stored chain's steps under the current weights, ``[B, K, H*A]``
        (or ``[B, K, 1]``); the entropy is the steps' analytic Gaussian entropy."""
        sigma = self.rollout_sigma
        if sigma <= 0:
            raise ValueError("`policy.sigma` is 0: the ODE's chain has no log-probs (GRPO needs sigma > 0)")
        batch = tensordict.batch_size
        chain = tensordict.get(CHAIN_KEY).detach().reshape(-1, self.num_steps + 1, self.chunk_size, self.action_dim)
        times = self.flow_times(chain.device)[:-1]
        x = chain[:, :-1]
        v = self.flow_velocity(x, times.expand(x.shape[0], -1), self.flow_context(tensordict))
        mean, std = self.step_gaussian(x, v, times.view(1, -1, 1, 1), sigma)
        std = std.expand_as(mean)
        log_probs = self._gaussian_log_prob(chain[:, 1:], mean, std)
        entropy = torch.log(std) + _HALF_LOG_2PI + 0.5
        return (self._token_axis(log_probs).reshape(*batch, self.num_steps, -1),
                self._token_axis(entropy).reshape(*batch, self.num_steps, -1))

    def imitation_loss(self) -> ImitationLoss:
        """The loss SFT fits this policy with: flow matching of the velocity."""
        return FlowMatchingLoss()

    def prepare_imitation(self, chunks: torch.Tensor | None = None, pad: torch.Tensor | None = None, *,
                          start_at_prior: bool = True) -> None:
        """Nothing to prepare: flow matching needs no temperature and has no token prior."""

    @contextlib.contextmanager
    def instruction_noise(self, std: float):
        """Policies with a continuous instruction embedding override this (SFT's augmentation)."""
        yield


__all__ = ["CHAIN_KEY", "FlowPolicyMixin", "LOG_PROB_UNITS"]
