"""Exact resume: what a GRPO checkpoint carries beyond weights and optimizer, and the GRPO step's own
random stream.

Everything that decides the next step travels, per rank: the prompt sampler (statistics and
generators), the held surplus groups with their instructions, the id counters, the step's random
stream and the non-finite count (the simulators need nothing: an episode is a pure function of task,
initial state and actions). Under DDP rank 0's file holds every rank's state, gathered at save.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from lightning.pytorch.utilities import rank_zero_warn

#: the checkpoint key of the state below
RESUME_KEY = "grpo_resume"


class TrainingRNG:
    """The GRPO step's random stream (action sampling, minibatch order), kept apart from the global
    one, so evaluations and callbacks between steps don't shift it and a checkpoint can carry it.
    The first step starts from the global state (what ``seed_everything`` set)."""

    def __init__(self) -> None:
        self.state: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @contextmanager
    def fork(self, device: torch.device):
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if self.state is not None:
                cpu, gpu = self.state
                torch.set_rng_state(cpu)
                if cuda and gpu is not None:
                    torch.cuda.set_rng_state(gpu, device)
            try:
                yield
            finally:
                self.state = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)


def _rank_state(module) -> dict:
    return {"sampler": module.sampler.state_dict(), "buffer": module.buffer.state_dict(),
            "group_ids": module.group_ids.state_dict(), "traj_ids": module.traj_ids.state_dict(),
            "rng": module.training_rng.state, "nonfinite_in_a_row": module.nonfinite.in_a_row}


def gather_resume_state(module) -> dict:
    """``{world_size, ranks: [state of rank 0, ...]}`` (called on every rank at save)."""
    state, world = _rank_state(module), module.trainer.world_size
    if world > 1:
        # Lightning's strategies gather tensors only; these are dicts of tensors and numbers
        import torch.distributed as dist

        states: list = [None] * world
        dist.all_gather_object(states, state)
    else:
        states = [state]
    return {"world_size": world, "ranks": states}


def restore_resume_state(module, resume: dict | None) -> None:
    """Puts this rank's saved state back; on another world size the prompt statistics are re-sharded
    and the id counters continue."""
    if resume is None:
        rank_zero_warn("the checkpoint has no GRPO sampler/buffer/RNG state (written by an older version): "
                       "resuming with fresh ones, so the run will not repeat exactly")
        return
    world, rank = module.trainer.world_size, module.global_rank
    if resume["world_size"] != world:
        # another world size shards the prompts differently: each prompt's statistics move to its new
        # rank; held groups and random streams start fresh; the ids continue past every id handed out
        rank_zero_warn(f"resuming a {resume['world_size']}-rank checkpoint on {world} ranks: the prompt statistics "
                       "are re-sharded to the new ranks, held groups and random streams start fresh (weights, "
                       "optimizer and step continue); the run is not an exact continuation")
        module.sampler.load_resharded([r["sampler"] for r in resume["ranks"]])
        for name in ("group_ids", "traj_ids"):
            count = max(r[name]["count"] for r in resume["ranks"]) * resume["world_size"]
            getattr(module, name).load_state_dict({"count": -(-count // world)})
        return
    _load_rank_state(module, resume["ranks"][rank])


def step_restorer(module):
    """A copy of this rank's state now, as a function that puts it back (an abandoned step,
    :mod:`vla_grpo.stopping`)."""
    state = copy.deepcopy(_rank_state(module))
    return lambda: _load_rank_state(module, state)


def _load_rank_state(module, state: dict) -> None:
    module.sampler.load_state_dict(state["sampler"])
    module.buffer.load_state_dict(state["buffer"])
    module.group_ids.load_state_dict(state["group_ids"])
    module.traj_ids.load_state_dict(state["traj_ids"])
    module.training_rng.state = state["rng"]
    module.nonfinite.in_a_row = int(state["nonfinite_in_a_row"])


__all__ = ["RESUME_KEY", "TrainingRNG", "gather_resume_state", "restore_resume_state", "step_restorer"]
