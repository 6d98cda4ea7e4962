"""Scripted-expert success over tasks and initial states (batched)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from .suite import TabletopSuite


@dataclass
class ExpertResult:
    """Outcome of the expert on one task: successes and control steps of each episode."""

    successes: list[bool]
    steps: list[int]

    @property
    def rate(self) -> float:
        return sum(self.successes) / max(1, len(self.successes))


def _prompts(jobs: list[tuple[int, int]]) -> TensorDict:
    tasks = torch.tensor([[t] for t, _ in jobs])
    states = torch.tensor([[s] for _, s in jobs])
    return TensorDict({"task_index": tasks, "init_state_id": states,
                       "group_id": torch.zeros(len(jobs), 1, dtype=torch.int64)}, batch_size=[len(jobs)])


def expert_success(
    suite: TabletopSuite,
    task_indices: Sequence[int],
    states: Sequence[int],
    *,
    chunk_size: int = 8,
    num_envs: int = 16,
) -> dict[int, ExpertResult]:
    """Run the expert on every (task, state) pair, ``num_envs`` episodes at a time."""
    jobs = [(t, s) for t in task_indices for s in states]
    results = {t: ExpertResult([], []) for t in task_indices}
    env = suite.make_env(min(num_envs, len(jobs)), chunk_size=chunk_size)
    n = env.batch_size[0]
    for start in range(0, len(jobs), n):
        batch = jobs[start : start + n]
        batch += [batch[-1]] * (n - len(batch))  # pad the last batch; padded runs are ignored
        td = env.reset(_prompts(batch))
        for _ in range(suite.max_decisions(chunk_size)):
            td["action"] = env.expert_chunk()
            td = env.step(td)["next"]
            if td["done"].all():
                break
        for i, (t, _) in enumerate(jobs[start : start + n]):
            results[t].successes.append(bool(td["success"][i]))
            results[t].steps.append(env.sims[i].steps)
    env.close()
    return results
