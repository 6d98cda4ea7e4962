"""Test-only callback: SIGKILL the training process at a chosen GRPO step and phase (resume tests).

* ``step_start``: as step ``step`` begins (its checkpoint from the step before is on disk);
* ``mid_rollout``: in step ``step``'s rollout, after the policy's ``after_decisions``-th sampled
  decision (the prompts drawn, the simulators half-way through their episodes);
* ``in_save``: after ``at_byte`` bytes of step ``step``'s checkpoint are written (the CLI's
  :class:`~vla_grpo.checkpoint.AtomicCheckpointIO` writes through ``torch.save``). A sharded (FSDP2)
  checkpoint counts rank 0's bytes over all its ``torch.save`` calls (``torch.distributed.checkpoint``'s
  tensor items, then Lightning's ``meta.pt``); ``at_byte=-1``: once every shard is written, before the
  folder is published; ``at_byte=-2``: right after ``last.ckpt`` was swapped to it, before the old
  folder is removed. ``group=True`` kills the whole process group (every rank).
"""
from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback

_GROUP = [False]


def after_sampled_decisions(policy, n: int, fn) -> None:
    """Wrap ``policy.act`` so that ``fn()`` runs once, right after its ``n``-th sampled (not greedy) decision."""
    original, left = policy.act, [n]

    def act(tensordict, *, greedy: bool = False):
        out = original(tensordict, greedy=greedy)
        if not greedy and left[0] > 0:
            left[0] -= 1
            if left[0] == 0:
                fn()
        return out

    policy.act = act


def _kill() -> None:
    if _GROUP[0]:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAfter:
    """A file that dies (SIGKILL) once ``limit`` bytes have gone through it."""

    def __init__(self, f, limit: int, counter: list[int] | None = None) -> None:
        self.f, self.limit, self.counter = f, limit, counter if counter is not None else [0]

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        room = self.limit - self.counter[0]
        if data.nbytes >= room:
            self.f.write(bytes(data[:room]))
            self.f.flush()
            _kill()
        self.counter[0] += data.nbytes
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


class KillAt(Callback):
    def __init__(self, step: int, phase: str = "step_start", after_decisions: int = 2, at_byte: int = 0,
                 group: bool = False) -> None:
        if phase not in ("step_start", "mid_rollout", "in_save"):
            raise ValueError(f"unknown phase {phase!r}")
        self.step, self.phase, self.after_decisions, self.at_byte = step, phase, after_decisions, at_byte
        _GROUP[0] = group

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.phase != "in_save":
            return
        if getattr(trainer.strategy, "_save_distributed_checkpoint", False):
            self._setup_sharded(trainer)
            return
        io, step, at_byte = trainer.strategy.checkpoint_io, self.step, self.at_byte
        original = io.save_checkpoint

        def save(checkpoint, path, storage_options=None):
            if checkpoint.get("global_step") == step:
                real = torch.save
                torch.save = lambda obj, f, *a, **k: real(obj, _KillAfter(f, at_byte), *a, **k)
            return original(checkpoint, path, storage_options)

        io.save_checkpoint = save

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        if self.phase == "step_start":
            _kill()
        elif self.phase == "mid_rollout":
            after_sampled_decisions(pl_module.policy, self.after_decisions, _kill)

    def _setup_sharded(self, trainer) -> None:
        import vla_grpo.checkpoint as ckpt

        if trainer.global_rank != 0:
            return
        strategy, step, at_byte = trainer.strategy, self.step, self.at_byte
        original, real_save, real_publish, real_fsync_dir = (strategy.save_checkpoint, torch.save,
                                                             ckpt.publish_folder, ckpt._fsync_dir)

        def save(checkpoint, filepath, storage_options=None):
            if checkpoint.get("global_step") == step:
                counter = [0]
                if at_byte >= 0:
                    def counted(obj, f, *a, **k):  # Lightning saves meta.pt by path, DCP its items into streams
                        f = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f  # noqa: SIM115
                        return real_save(obj, _KillAfter(f, at_byte, counter), *a, **k)
                    torch.save = counted
                elif at_byte == -1:
                    ckpt.publish_folder = lambda *a, **k: _kill()
                else:
                    def swapped(*a, **k):
                        real_fsync_dir(*a, **k)
                        _kill()
                    ckpt._fsync_dir = swapped
            try:
                return original(checkpoint, filepath, storage_options)
            finally:
                torch.save, ckpt.publish_folder, ckpt._fsync_dir = real_save, real_publish, real_fsync_dir

        strategy.save_checkpoint = save
