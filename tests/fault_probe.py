"""A callback for fault-injection fits: audits every round the engine returns and every group
the buffer hands out, and writes what it saw to a JSON file when the fit ends.

Used by ``tests/test_faults.py`` as ``--trainer.callbacks+=tests.fault_probe.BufferAudit``.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from vla_grpo.keys import GROUP_ID_KEY, TRAJ_ID_KEY


class BufferAudit(pl.Callback):
    """Wraps ``module.rollout.run`` (eval rounds), ``module.rollout.run_round`` (training rounds) and
    ``module.buffer.pop_groups`` (the real ones) to check them.

    - every round: each episode's valid decisions are a prefix ending at the env's own done flag;
    - every popped batch: whole groups of ``group_size`` distinct trajectories, none seen before.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.audit = {"rounds": 0, "episodes": 0, "partial_episodes": 0, "popped_groups": 0,
                      "bad_groups": 0, "repeated_trajectories": 0, "steps": 0, "engine_faults": {}}
        self._seen: set[int] = set()

    def on_train_start(self, trainer, module) -> None:
        run, run_round, pop = module.rollout.run, module.rollout.run_round, module.buffer.pop_groups
        group_size = module.hparams.group_size

        def audit(data):
            valid, done = data["valid"], data["next", "done"].squeeze(-1)
            last = valid.sum(-1) - 1
            prefix = valid.long().cummin(-1).values.bool() == valid
            ended = done.gather(-1, last.clamp(min=0)[:, None]).squeeze(-1) & (last >= 0) & prefix.all(-1)
            self.audit["rounds"] += 1
            self.audit["episodes"] += data.shape[0]
            self.audit["partial_episodes"] += int((~ended).sum())
            return data

        def audited_run(policy, prompts, group_ids, *, greedy=False):
            return audit(run(policy, prompts, group_ids, greedy=greedy))

        def audited_round(policy, prompts, group_ids, traj_ids, *, greedy=False):
            record = run_round(policy, prompts, group_ids, traj_ids, greedy=greedy)
            audit(record.data)
            return record

        def audited_pop(n):
            data = pop(n)
            if data is not None:
                for g in torch.unique(data[GROUP_ID_KEY]).tolist():
                    trajs = set(torch.unique(data[TRAJ_ID_KEY][data[GROUP_ID_KEY] == g]).tolist())
                    self.audit["popped_groups"] += 1
                    self.audit["bad_groups"] += int(len(trajs) != group_size)
                    self.audit["repeated_trajectories"] += len(trajs & self._seen)
                    self._seen |= trajs
            return data

        module.rollout.run, module.rollout.run_round, module.buffer.pop_groups = audited_run, audited_round, audited_pop

    def on_fit_end(self, trainer, module) -> None:
        self.audit["steps"] = trainer.global_step
        self.audit["engine_faults"] = dict(module.rollout.faults)
        self.out.write_text(json.dumps(self.audit))
