"""Test-only callback: send this process a real signal (``os.kill``) at a chosen GRPO step and phase, and
write the simulator workers' pids to a file (the stopping tests check none outlives the trainer).

* ``step_start``: as step ``step`` begins;
* ``mid_rollout``: in step ``step``'s rollout, after the policy's ``after_decisions``-th sampled decision
  (prompts drawn, simulators half-way through their episodes);
* ``update``: in step ``step``'s update, as the first minibatch is scored;
* ``twice_in_save``: in step ``step``'s update, and again while the checkpoint after that step is being
  written (the second signal must exit at once and leave the previous checkpoint intact).
"""
from __future__ import annotations

import json
import os
import signal

import torch
from lightning.pytorch.callbacks import Callback

from tests.kill_probe import after_sampled_decisions


class SignalAt(Callback):
    def __init__(self, step: int, phase: str = "mid_rollout", signum: int = int(signal.SIGINT),
                 after_decisions: int = 2, pids_file: str | None = None, rank: int | None = None) -> None:
        if phase not in ("step_start", "mid_rollout", "update", "twice_in_save"):
            raise ValueError(f"unknown phase {phase!r}")
        self.step, self.phase, self.signum, self.after_decisions = step, phase, signum, after_decisions
        self.pids_file = pids_file
        self.sent = 0
        self.rank = rank  # None: every rank signals itself; else only this global rank (the others learn it)

    def _send(self) -> None:
        self.sent += 1
        os.kill(os.getpid(), self.signum)

    def _record_pids(self, pl_module) -> None:
        if self.pids_file is None:
            return
        pids = list(pl_module.rollout.worker_pids)
        with open(f"{self.pids_file}.{pl_module.global_rank}", "w") as f:
            json.dump({"trainer": os.getpid(), "workers": pids}, f)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.phase != "twice_in_save":
            return
        real_save, probe = torch.save, self

        def save(obj, f, *args, **kwargs):  # the second signal lands while the checkpoint is written
            if probe.sent == 1 and isinstance(obj, dict) and "state_dict" in obj:
                assert obj.get("global_step") == probe.step + 1
                probe._send()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step or self.rank not in (None, trainer.global_rank):
            return
        self._record_pids(pl_module)
        if self.phase == "step_start":
            self._send()
        elif self.phase == "mid_rollout":
            after_sampled_decisions(pl_module.policy, self.after_decisions, self._send)
        else:  # update, twice_in_save: the first signal as the update scores its first minibatch
            original, sent, send = pl_module.policy.score, [False], self._send

            def score(*args, **kwargs):
                if not sent[0]:
                    sent[0] = True
                    send()
                return original(*args, **kwargs)

            pl_module.policy.score = score
