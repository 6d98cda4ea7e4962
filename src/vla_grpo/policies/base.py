"""The policy interface the trainer talks to, as token heads implement it (flow heads: :mod:`.flow`).

A token policy is a ``torchrl.modules.vla.VLAWrapperBase`` with a token action head
plus :class:`TokenPolicyMixin`, which adds what GRPO needs and TorchRL lacks
(:class:`~vla_grpo.policies.flow.FlowPolicyMixin` gives a flow-matching head the
same methods; docs/policies.md tabulates both):

* a ``temperature`` applied to the action logits in *one* place
  (``_action_logits``), so the distribution that samples the rollout tokens and
  the one that scores them at update time are the same by construction;
* :meth:`act` (sample at the temperature, or greedy) writing
  ``("vla_action", "tokens" | "log_probs" | "chunk")`` with per-token log-probs;
* :meth:`score` returning per-token log-probs and entropies of given tokens
  under the current weights;
* action normalization: the continuous chunk is decoded from tokens by a
  ``UniformActionTokenizer`` whose per-dimension ``[low, high]`` are the demos'
  q01/q99 (OpenVLA), kept as buffers so they travel with checkpoints;
* a token prior: :meth:`token_log_prior` of demo chunks and
  :meth:`set_token_prior`, which starts the action head at it before SFT when
  the policy's head allows it;
* :meth:`imitation_loss`: the loss SFT fits it with (token cross-entropy,
  :class:`~vla_grpo.losses.TokenBCLoss`), and :meth:`prepare_imitation`, what SFT
  does to it first (temperature 1, the token prior). Each policy family names
  its own, so the SFT module never branches on the policy type;
* :attr:`action_record_keys` / :attr:`action_train_keys`: the ``vla_action``
  entries the rollout records and a trained decision keeps (the flow family,
  :mod:`vla_grpo.policies.flow`, stores its denoising chain instead of tokens).

Nothing outside ``policies/`` knows a model's internals.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, set_interaction_type
from torchrl.data.vla import UniformActionTokenizer

from vla_grpo.keys import ACTION_TOKENS_KEY
from vla_grpo.losses import ImitationLoss, TokenBCLoss


class TokenPolicyMixin:
    """GRPO-facing methods for token-head ``VLAWrapperBase`` policies.

    Subclasses call :meth:`_init_token_policy` in ``__init__`` after the base
    constructor and keep ``log_probs_mode="token"``.
    """

    temperature: float
    #: True once weights and action normalization come from a pretrained policy directory:
    #: SFT then keeps that normalization (the head's tokens mean what pretraining taught)
    pretrained: bool = False

    def _init_token_policy(self, action_dim: int, vocab_size: int, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0 (got {temperature})")
        self.temperature = float(temperature)
        self.register_buffer("action_low", -torch.ones(action_dim))
        self.register_buffer("action_high", torch.ones(action_dim))
        self._rebuild_tokenizer(vocab_size)

    def _rebuild_tokenizer(self, vocab_size: int | None = None) -> None:
        vocab_size = vocab_size or self.vocab_size
        self.action_tokenizer = UniformActionTokenizer(
            vocab_size, low=self.action_low.cpu(), high=self.action_high.cpu()
        )

    def set_action_stats(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Set per-dimension normalization bounds (e.g. demos' q01/q99)."""
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if low.shape != self.action_low.shape or high.shape != self.action_high.shape:
            raise ValueError(
                f"action stats must have shape {tuple(self.action_low.shape)} "
                f"(got low {tuple(low.shape)}, high {tuple(high.shape)})"
            )
        # a constant dimension would give a zero-width bin range
        high = torch.maximum(high, low + 1e-4)
        self.action_low.copy_(low)
        self.action_high.copy_(high)
        self._rebuild_tokenizer()

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: D401 - torch hook
        super()._load_from_state_dict(*args, **kwargs)
        self._rebuild_tokenizer()

    # -- the temperature lives here, for sampling and scoring alike ----------
    def _action_logits(self, tensordict: TensorDictBase) -> torch.Tensor:
        return super()._action_logits(tensordict) / self.temperature

    #: ``vla_action`` entries the rollout records per decision (``chunk`` is what the env executes)
    action_record_keys = ("tokens", "log_probs", "chunk")
    #: ``vla_action`` entries a trained decision keeps: what :meth:`score` reads, and the sampling log-probs
    action_train_keys = ("tokens", "log_probs")

    @property
    def tokens_per_decision(self) -> int:
        """Entries of :meth:`score`'s log-probs per decision: ``H x A`` action tokens."""
        return self.chunk_size * self.action_dim

    def act(self, tensordict: TensorDictBase, *, greedy: bool = False) -> TensorDictBase:
        """Sample (or argmax) an action chunk; writes tokens, per-token log-probs, chunk."""
        interaction = InteractionType.DETERMINISTIC if greedy else InteractionType.RANDOM
        with set_interaction_type(interaction):
            return self(tensordict)

    def score(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``(log_probs, entropy)`` of the stored tokens, both ``[B, H, A]``."""
        logits = self._action_logits(tensordict).float()
        log_p = torch.log_softmax(logits, dim=-1)
        tokens = tensordict.get(ACTION_TOKENS_KEY).long()
        log_probs = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return log_probs, entropy

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Continuous, de-normalized action chunk of given tokens."""
        return self.action_tokenizer.decode(tokens)

    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Tokens of continuous actions (clipped to the normalization bounds)."""
        return self.action_tokenizer.encode(actions)

    def imitation_loss(self) -> ImitationLoss:
        """The loss SFT fits this policy with: cross-entropy on its action tokens."""
        return TokenBCLoss()

    def prepare_imitation(self, chunks: torch.Tensor | None = None, pad: torch.Tensor | None = None, *,
                          start_at_prior: bool = True) -> None:
        """SFT's start: imitation is taken on the plain distribution (temperature 1); given the demos'
        chunks (``[N, H, A]``, ``pad`` ``[N, H]``), the action head starts at their token prior
        (:meth:`set_token_prior`) when ``start_at_prior``. Called again with the demos it only adds the prior.
        """
        self.temperature = 1.0
        if chunks is None or not start_at_prior:
            return
        if not self.set_token_prior(self.token_log_prior(chunks, pad)):
            warnings.warn(f"{type(self).__name__} can't start its action head at the demos' token "
                          "prior: SFT starts from uniform action logits", stacklevel=3)

    # -- the token prior ------------------------------------------------------------
    def token_log_prior(self, chunks: torch.Tensor, pad: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
        """Centred log-frequency ``[H, A, V]`` of each action token at each chunk step of ``chunks``
        (``[N, H, A]`` continuous, ``pad`` ``[N, H]`` marks steps left out)."""
        H, A, V = self.chunk_size, self.action_dim, self.vocab_size
        tokens = self.encode_actions(chunks).long()  # [N, H, A]
        slot = (torch.arange(H)[:, None] * A + torch.arange(A)[None]) * V  # [H, A]
        keep = (~pad)[..., None].expand_as(tokens)
        counts = torch.bincount((tokens + slot)[keep], minlength=H * A * V).float().view(H, A, V)
        return (counts + smoothing).log() - (counts + smoothing).log().mean(-1, keepdim=True)

    @contextlib.contextmanager
    def instruction_noise(self, std: float):
        """Within the block, forwards see a perturbed instruction feature (an SFT augmentation).

        Policies with a continuous instruction embedding override this; the
        default does nothing (a hashed or tokenized instruction has no
        neighbourhood to smooth). GRPO never enters it: sampling and scoring
        must see the same distribution.
        """
        yield

    def set_token_prior(self, log_prior: torch.Tensor) -> bool:
        """Start the action logits at ``log_prior`` (``[H, A, V]``); False when this policy can't.

        Why: from uniform logits, every early SFT step's largest and most
        consistent gradient is "move towards the marginal" (unused action
        dimensions alone are a large share of the tokens), which can saturate a
        small trunk so that it predicts the marginal for every observation.
        Starting at the marginal leaves only observation-dependent gradient.
        Policies with a bias on a ``[H * A * V]`` output layer override this.
        """
        return False


def instruction_strings(instruction, batch: int) -> list[str]:
    """The batch's instructions as ``batch`` strings (a NonTensorStack, a list or one str)."""
    data = getattr(instruction, "tolist", lambda: instruction)()
    if isinstance(data, str):
        return [data] * batch
    flat: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        else:
            flat.append(str(item))
    return flat * batch if len(flat) == 1 and batch != 1 else flat


def check_policy_fits_suite(policy, suite) -> None:
    """One-line error naming ``--model.policy.init_args.<dim>`` when a policy dimension differs from the suite's."""
    for name in ("action_dim", "state_dim", "image_size"):
        want, got = getattr(suite, name), getattr(policy, name, None)
        if got is not None and got != want:
            raise ValueError(f"`--model.policy.init_args.{name}` is {got} but the suite {suite.name!r} "
                             f"has {name}={want}")
