"""One-line errors for bad ``--model.*``/``--data.*`` values: the checks the modules share."""
from __future__ import annotations


def at_least(group: str, **values: tuple[float, float]) -> None:
    """``at_least("model", group_size=(value, 2), ...)``: each ``value`` must be ``>= minimum``."""
    for name, (value, minimum) in values.items():
        if value < minimum:
            raise ValueError(f"`--{group}.{name}` must be >= {minimum} (got {value})")


def check_optimizer(lr: float, weight_decay: float) -> None:
    """AdamW's own check would fail later, as a traceback."""
    if not lr > 0 or weight_decay < 0:
        raise ValueError(f"`--model.lr` must be > 0 and `--model.weight_decay` >= 0 (got {lr}, {weight_decay})")


__all__ = ["at_least", "check_optimizer"]
