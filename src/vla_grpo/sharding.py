"""FSDP2 for the policies: how a policy is sharded, and whole weights while it rolls out.

Under Lightning's ``ModelParallelStrategy`` (FSDP2, ``torch.distributed.fsdp.fully_shard``)
:meth:`GRPOModule.configure_model` calls :func:`shard_policy`: each of the policy's
``fsdp_units()`` (a transformers VLA: its vision and decoder layers) becomes an FSDP
unit, then the policy itself (embeddings, heads, the rest). ``act`` and ``score`` gather and free
the shards like ``forward`` (``score`` is registered as a forward method; ``act`` calls ``forward``).

Rollouts can't gather per call: each rank rolls out its own episodes, which end at
different decisions, so ranks make different numbers of policy calls and per-call
all-gathers would deadlock. :func:`gathered` all-gathers every unit once before a
rollout round (every rank enters a round together) and keeps the weights whole until
the round ends, as RL systems hand full weights to their rollout engine; the updates
run sharded.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def _fsdp_units(module: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)] if isinstance(module, nn.Module) else []


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` (or a part of it) is FSDP2-sharded."""
    return bool(_fsdp_units(module))


def shard_policy(policy: nn.Module, mesh, *, param_dtype: torch.dtype | None = None) -> None:
    """``fully_shard`` the policy's units, then the policy, over ``mesh`` (data parallel).

    ``param_dtype=torch.bfloat16``: the forward and backward compute in bf16 while the
    sharded fp32 weights, the optimizer and the gradient reduction stay fp32 (FSDP2's
    ``MixedPrecisionPolicy``).
    """
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    if is_sharded(policy):
        return
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    units = policy.fsdp_units() if hasattr(policy, "fsdp_units") else []
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    fully_shard(policy, mesh=mesh, mp_policy=mp)
    policy.fsdp_param_dtype = param_dtype  # rollouts outside Lightning's autocast cast to it (gathered)
    register_fsdp_forward_method(policy, "score")  # act goes through forward


@contextlib.contextmanager
def gathered(policy: nn.Module):
    """Whole (all-gathered) weights on every rank inside the block; a no-op for an unsharded policy.

    Every rank must enter together (it all-gathers). Calls inside gather nothing more, and run
    under autocast to the gathered dtype when it is not fp32.
    """
    units = _fsdp_units(policy)
    if not units:
        yield
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    # bf16-gathered weights need bf16 inputs: autocast, also where Lightning's is not on (eval callbacks)
    dtype = getattr(policy, "fsdp_param_dtype", None)
    device = next(policy.parameters()).device.type
    try:
        with torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def grad_norm(module: nn.Module) -> torch.Tensor:
    """The total 2-norm of ``module``'s gradients (what norm clipping compares with its bound), as a plain
    tensor: FSDP2's gradients are sharded ``DTensor``s, whose norm is gathered."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


__all__ = ["gathered", "grad_norm", "is_sharded", "shard_policy"]
