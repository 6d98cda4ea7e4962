"""Test-only callback: SIGKILL the training process at a chosen GRPO step and phase (resume tests).

* ``step_start``: as step ``step`` begins (its checkpoint from the step before is on disk);
* ``mid_rollout``: in step ``step``'s rollout, after the policy's ``after_decisions``-th sampled
  decision (the prompts drawn, the simulators half-way through their episodes);
* ``in_save``: after ``at_byte`` bytes of step ``step``'s checkpoint are written (the CLI's
  :class:`~vla_grpo.checkpoint.AtomicCheckpointIO` writes through ``torch.save``).
"""
from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAfter:
    """A file that dies (SIGKILL) once ``limit`` bytes have gone through it."""

    def __init__(self, f, limit: int) -> None:
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data) -> int:
        room = self.limit - self.written
        if len(data) >= room:
            self.f.write(bytes(data[:room]))
            self.f.flush()
            _kill()
        self.written += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


class KillAt(Callback):
    def __init__(self, step: int, phase: str = "step_start", after_decisions: int = 2, at_byte: int = 0) -> None:
        if phase not in ("step_start", "mid_rollout", "in_save"):
            raise ValueError(f"unknown phase {phase!r}")
        self.step, self.phase, self.after_decisions, self.at_byte = step, phase, after_decisions, at_byte

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.phase != "in_save":
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
            policy, original, left = pl_module.policy, pl_module.policy.act, [self.after_decisions]

            def act(tensordict, *, greedy: bool = False):
                out = original(tensordict, greedy=greedy)
                if not greedy:
                    left[0] -= 1
                    if left[0] <= 0:
                        _kill()
                return out

            policy.act = act
