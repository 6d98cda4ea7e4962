"""Test-only callback: SIGKILL the training process at a chosen GRPO step and phase (resume tests).

* ``step_start``: as step ``step`` begins (its checkpoint from the step before is on disk);
* ``mid_rollout``: ``delay_s`` after step ``step`` begins, while its rollouts run;
* ``in_save``: ``delay_s`` after the checkpoint of step ``step`` starts being written.
"""
from __future__ import annotations

import os
import signal
import threading

from lightning.pytorch.callbacks import Callback


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(Callback):
    def __init__(self, step: int, phase: str = "step_start", delay_s: float = 0.0) -> None:
        if phase not in ("step_start", "mid_rollout", "in_save"):
            raise ValueError(f"unknown phase {phase!r}")
        self.step, self.phase, self.delay_s = step, phase, delay_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        if self.phase == "step_start":
            _kill()
        elif self.phase == "mid_rollout":
            threading.Timer(self.delay_s, _kill).start()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.phase == "in_save" and trainer.global_step == self.step:
            threading.Timer(self.delay_s, _kill).start()
