"""Greedy evaluation on a suite's splits, shared by GRPO, SFT and the callbacks.

The eval set is a fixed list of (split, task, initial state) items, the first
``states_per_task`` states of every task of each split. It is a map-style
dataset, so under DDP Lightning's ``DistributedSampler`` shards it by rank and
the logged means are all-reduced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import lightning as L
from torch.utils.data import DataLoader, Dataset

from vla_grpo.envs.base import Suite
from vla_grpo.keys import SUCCESS_KEY
from vla_grpo.prompts import Prompt, split_prompts
from vla_grpo.rollout import GroupedRollout


class EvalItem(NamedTuple):
    """One greedy eval episode: a split and a prompt of it."""

    split: str
    prompt: Prompt


class EvalPrompts(Dataset):
    """Every task of every split in ``splits`` x its first ``states_per_task`` states.

    Initial state ``s`` of a task is asked in its phrasing ``s mod (number of
    phrasings)``: all of them in turn (the held-out ones, on the ``paraphrase`` split).
    """

    def __init__(self, suite: Suite, splits: list[str], states_per_task: int) -> None:
        tasks = suite.all_tasks()
        self.items = [
            EvalItem(split, p._replace(phrasing=p.init_state_id % tasks[p.task_index].num_phrasings))
            for split in splits
            for p in split_prompts(suite, split, states_per_task)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> EvalItem:
        return self.items[i]


@dataclass(frozen=True)
class EvalSpec:
    """Which greedy episodes an evaluation runs, and how many go to the simulators at once.

    Attributes:
        splits: the splits to evaluate (None: all of the suite's).
        states_per_task: initial states ``0..states_per_task-1`` of every task.
        batch_size: episodes per rollout (the eval simulators' ``num_envs``).
    """

    splits: list[str] | None
    states_per_task: int
    batch_size: int

    def dataloader(self, suite: Suite) -> DataLoader:
        """The eval items in batches of ``batch_size`` (a map-style set: DDP shards it by rank)."""
        dataset = EvalPrompts(suite, self.splits or suite.splits, self.states_per_task)
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=list)


def evaluate_items(rollout: GroupedRollout, policy, items: list[EvalItem]) -> list[bool]:
    """Greedy success of each item; runs in env-sized batches (padding the last one)."""
    n, out = rollout.num_envs, []
    for start in range(0, len(items), n):
        chunk = items[start:start + n]
        prompts = [it.prompt for it in chunk]
        prompts += [prompts[-1]] * (n - len(prompts))
        data = rollout.run(policy, prompts, list(range(n)), greedy=True)
        success = data.get(("next", SUCCESS_KEY)).squeeze(-1).any(-1)
        out.extend(bool(s) for s in success[: len(chunk)])
    return out


def greedy_success(rollout: GroupedRollout, policy, items: list[EvalItem]) -> list[bool]:
    """:func:`evaluate_items` with the policy in eval mode (its mode is restored after)."""
    was_training = policy.training
    policy.eval()
    try:
        return evaluate_items(rollout, policy, items)
    finally:
        policy.train(was_training)


def split_counts(items: list[EvalItem], success: list[bool]) -> dict[str, tuple[float, int]]:
    """``{split: (successes, episodes)}`` of per-item outcomes."""
    results: dict[str, tuple[float, int]] = {}
    for item, ok in zip(items, success, strict=False):
        s, c = results.get(item.split, (0.0, 0))
        results[item.split] = (s + float(ok), c + 1)
    return results


def greedy_validation_step(module: L.LightningModule, items: list[EvalItem]) -> dict[str, list[bool]]:
    """The GRPO and SFT modules' ``validation_step``: greedy episodes for ``items`` on
    ``module.rollout``, ``eval/<split>/success`` logged (all-reduced across ranks), and each
    episode's outcome returned for the per-task tables of :class:`vla_grpo.callbacks.SplitEvaluation`."""
    success = greedy_success(module.rollout, module.policy, items)
    for split, (succ, count) in split_counts(items, success).items():
        module.log(f"eval/{split}/success", succ / count, batch_size=count, on_step=False, on_epoch=True,
                   sync_dist=True)
    return {"success": success}


def per_task_success(suite: Suite, items: list[EvalItem], success: list[bool]) -> dict[str, float]:
    """Success rate per task name."""
    tasks = suite.all_tasks()
    totals: dict[str, list[int]] = {}
    for item, ok in zip(items, success, strict=False):
        name = tasks[item.prompt.task_index].name
        s = totals.setdefault(name, [0, 0])
        s[0] += int(ok)
        s[1] += 1
    return {name: s / c for name, (s, c) in totals.items()}


__all__ = [
    "EvalItem", "EvalPrompts", "EvalSpec", "evaluate_items", "greedy_success", "greedy_validation_step",
    "per_task_success", "split_counts",
]
