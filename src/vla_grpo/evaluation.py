"""The greedy evaluation engine: a module's eval episodes, sharded over ranks, rolled out in padded batches.

GRPO's and SFT's ``validation_step``, the callbacks (``SplitEvaluation``,
``EvalVideo``) and ``benchmarks/sft.py`` all evaluate through :func:`run_greedy`:

* the episodes are an :class:`EvalSpec`'s items (``module.eval_spec``): every
  split's tasks x their first ``states_per_task`` initial states;
* a rank plays ``items[rank::world_size]`` (Lightning's ``DistributedSampler``
  shards the val loop's items the same way before they get here);
* on the rollout engine's ``num_envs`` sub-envs at a time, the last batch padded
  (:func:`vla_grpo.envs.scene.evaluate.play_batches`); with an FSDP-sharded
  policy every rank runs as many batches as the largest shard needs;
* per-episode outcomes come back as :class:`EvalEpisodes` (with each episode's
  frames on request), counted per task into the one result type,
  :class:`~vla_grpo.envs.scene.evaluate.SplitResult`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vla_grpo.envs.base import Suite
from vla_grpo.envs.scene.evaluate import SplitResult, count_by_task, play_batches
from vla_grpo.keys import IMAGE_KEY, SUCCESS_KEY
from vla_grpo.prompts import Prompt, split_prompts
from vla_grpo.rollout import GroupedRollout
from vla_grpo.sharding import is_sharded


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

    def items(self, suite: Suite) -> list[EvalItem]:
        """The episodes, split by split, task by task, state by state."""
        return EvalPrompts(suite, list(self.splits or suite.splits), self.states_per_task).items

    def dataloader(self, suite: Suite) -> DataLoader:
        """The eval items in batches of ``batch_size`` (a map-style set: DDP shards it by rank)."""
        dataset = EvalPrompts(suite, list(self.splits or suite.splits), self.states_per_task)
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=list)

    def override(self, *, splits: list[str] | None = None, states_per_task: int | None = None) -> EvalSpec:
        """This spec with the given fields replaced (``None`` keeps a field)."""
        return replace(self, splits=list(splits) if splits else self.splits,
                       states_per_task=states_per_task or self.states_per_task)


@dataclass
class EvalEpisodes:
    """One rank's greedy episodes.

    Attributes:
        items: the episodes this rank played (its shard), in order.
        success: whether each succeeded.
        frames: each episode's frames, uint8 ``[T, H, W, 3]`` from its first to its
            last observation (only when asked for).
        batches: rollout batches run, lockstep padding batches included.
    """

    items: list[EvalItem]
    success: list[bool]
    frames: list[np.ndarray] | None = None
    batches: int = 0

    def task_counts(self, suite: Suite) -> torch.Tensor:
        """``[num_tasks, 2]`` (successes, episodes), what ranks all-reduce."""
        return count_by_task(suite, [it.prompt.task_index for it in self.items], self.success)

    def result(self, suite: Suite, step: int = 0, stage: str = "", *, full_names: bool = False) -> SplitResult:
        """The per-task counts of these episodes alone (no reduction over ranks)."""
        return SplitResult.from_task_counts(suite, self.task_counts(suite), step, stage, full_names=full_names)


@contextlib.contextmanager
def eval_mode(policy):
    """The policy in eval mode inside, its mode restored after."""
    was_training = policy.training
    policy.eval()
    try:
        yield
    finally:
        policy.train(was_training)


def lockstep_batches(num_items: int, world_size: int, batch_size: int) -> int:
    """Rollout batches of the largest of ``world_size`` shards (``items[rank::world_size]``) of ``num_items``."""
    largest = -(-num_items // world_size)
    return -(-largest // batch_size)


def _play(rollout: GroupedRollout, policy, items: list[EvalItem], frames: bool) -> list[tuple[bool, np.ndarray | None]]:
    """One rollout of a full batch of items: ``(success, frames or None)`` per sub-env."""
    data = rollout.run(policy, [it.prompt for it in items], list(range(rollout.num_envs)), greedy=True)
    success = data.get(("next", SUCCESS_KEY)).squeeze(-1).any(-1).tolist()
    if not frames:
        return [(bool(s), None) for s in success]
    out = []
    for i, ok in enumerate(success):
        length = int(data.get("valid")[i].sum())
        first = data.get(IMAGE_KEY)[i, :length]
        last = data.get(("next", *IMAGE_KEY))[i, length - 1:length]
        out.append((bool(ok), torch.cat([first, last]).permute(0, 2, 3, 1).contiguous().numpy()))
    return out


def run_greedy(rollout: GroupedRollout, policy, items: list[EvalItem], *, rank: int = 0, world_size: int = 1,
               lockstep: bool | None = None, frames: bool = False,
               progress: Callable[[int, float], None] | None = None) -> EvalEpisodes:
    """Greedy episodes of this rank's shard ``items[rank::world_size]``, policy in eval mode.

    Args:
        rollout: the rollout engine; a batch is its ``num_envs`` episodes, the last padded.
        policy: the policy (its train/eval mode is restored after).
        items: every rank's episodes (the same list on each rank).
        lockstep: run as many batches as the largest shard needs, the extra ones
            on copies of ``items[0]`` (discarded). Default: when the policy is
            FSDP-sharded, which gathers its weights per batch on all ranks together.
        frames: also return each episode's frames.
        progress: called after each batch with its episodes and the success so far.
    """
    shard, n = items[rank::world_size], rollout.num_envs
    lockstep = is_sharded(policy) if lockstep is None else lockstep
    num_batches = lockstep_batches(len(items), world_size, n) if lockstep else None
    done: list[bool] = []
    batches = 0

    def run_batch(padded: list[EvalItem]):
        nonlocal batches
        batches += 1
        return _play(rollout, policy, padded, frames)

    def on_batch(outcomes) -> None:
        done.extend(ok for ok, _ in outcomes)
        if progress is not None:
            progress(len(outcomes), sum(done) / len(done))

    with eval_mode(policy):
        outcomes = play_batches(shard, n, run_batch, num_batches=num_batches, filler=items[0] if items else None,
                                on_batch=on_batch)
    return EvalEpisodes(shard, [ok for ok, _ in outcomes], [f for _, f in outcomes] if frames else None, batches)


def greedy_validation_step(module: L.LightningModule, items: list[EvalItem]) -> dict[str, list[bool]]:
    """The GRPO and SFT modules' ``validation_step``: greedy episodes for ``items`` on
    ``module.rollout``, ``eval/<split>/success`` logged (all-reduced across ranks), and each
    episode's outcome returned for the per-task tables of :class:`vla_grpo.callbacks.SplitEvaluation`."""
    episodes = run_greedy(module.rollout, module.policy, items)
    for split, (succ, count) in episodes.result(module.suite).split_counts().items():
        module.log(f"eval/{split}/success", succ / count, batch_size=count, on_step=False, on_epoch=True,
                   sync_dist=True)
    return {"success": episodes.success}


__all__ = [
    "EvalEpisodes", "EvalItem", "EvalPrompts", "EvalSpec", "SplitResult", "eval_mode", "greedy_validation_step",
    "lockstep_batches", "run_greedy",
]
