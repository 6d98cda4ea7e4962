"""The non-finite guard: an update whose loss or gradient is NaN/inf is skipped, and too many in a row stop the run."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_warn


class NonFiniteUpdatesError(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradient: the run stops (the last
    checkpoint, written before them, holds finite weights)."""


class NonFiniteGuard:
    """Counts non-finite updates in a row (a checkpoint carries the count: ``vla_grpo.resume``).

    Args:
        limit: this many skipped in a row raise :class:`NonFiniteUpdatesError`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0

    def skip(self, loss: torch.Tensor, norm: torch.Tensor, *, step: int,
             on_any_rank: Callable[[bool], bool] = bool) -> bool:
        """Whether this update is to be skipped: its loss or gradient norm is not finite on any rank
        (``on_any_rank`` ORs a flag over the ranks, so every rank skips it together)."""
        bad = on_any_rank(not (math.isfinite(float(loss.detach())) and math.isfinite(float(norm))))
        if not bad:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        rank_zero_warn(f"GRPO step {step}: non-finite loss or gradient (loss {float(loss.detach())}, "
                       f"grad norm {float(norm)}); update skipped ({self.in_a_row} in a row, stopping at {self.limit})")
        if self.in_a_row >= self.limit:
            raise NonFiniteUpdatesError(
                f"{self.in_a_row} updates in a row had a non-finite loss or gradient (GRPO step {step}): stopping. "
                f"The weights are those of the last finite update; lower --model.lr or --model.max_grad_norm, "
                f"or raise --model.max_nonfinite_updates")
        return True


__all__ = ["NonFiniteGuard", "NonFiniteUpdatesError"]
