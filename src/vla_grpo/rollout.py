"""Grouped rollouts, trajectory splitting and the dynamic-sampling replay buffer.

One *round* resets ``prompts_per_round x group_size`` sub-envs, G copies of
each prompt (task, initial state) sharing a ``group_id``, and rolls them out
with one batched policy call per decision until every episode is done. Each
episode becomes a trajectory TensorDict that goes through TorchRL's
``MCAdvantage`` replay-buffer transform: it waits for the G members of a group,
drops the group if all outcomes are equal (dynamic sampling), and writes the
group-normalised advantage ``(R - mean) / std`` on every decision.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives.llm import MCAdvantage

from vla_grpo.envs.base import TRAIN_SPLIT, Suite
from vla_grpo.keys import (
    ACTION_KEY,
    ACTION_TOKENS_KEY,
    GROUP_ID_KEY,
    GROUP_STD_KEY,
    INIT_STATE_KEY,
    RETURN_KEY,
    SAMPLE_LOG_PROBS_KEY,
    SUCCESS_KEY,
    TASK_INDEX_KEY,
    TRAJ_ID_KEY,
    TRAJ_TOKENS_KEY,
    VLA_ACTION_KEY,
)

#: what a stored decision keeps of a rollout step
#: (instructions stay out: non-tensor entries make the tensor storage crawl;
#: :func:`attach_instructions` restores them from ``task_index``)
DECISION_KEYS = (
    "observation",
    ACTION_TOKENS_KEY,
    SAMPLE_LOG_PROBS_KEY,
    GROUP_ID_KEY,
    TASK_INDEX_KEY,
    INIT_STATE_KEY,
    ("next", "reward"),
    ("next", "done"),
)


class Prompt(NamedTuple):
    """A (task, initial state) pair: what a GRPO group is rolled out from."""

    task_index: int
    init_state_id: int


def split_prompts(suite: Suite, split: str, states_per_task: int | None = None) -> list[Prompt]:
    """All prompts of a split: every task x its first ``states_per_task`` initial states."""
    out = []
    for task in suite.tasks(split):
        index = suite.task_index(task.name)
        n = task.num_init_states if states_per_task is None else min(states_per_task, task.num_init_states)
        out.extend(Prompt(index, s) for s in range(n))
    return out


class PromptSampler:
    """Uniform prompt draws from this rank's shard of the train split.

    Ranks get disjoint shards (``prompts[rank::world_size]``), so DDP ranks roll
    out different prompts with their own simulators.
    """

    def __init__(self, suite: Suite, *, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        prompts = split_prompts(suite, TRAIN_SPLIT)
        self.prompts = prompts[rank::world_size] or prompts
        self.generator = torch.Generator().manual_seed(seed * 1_000 + rank)

    def draw(self, n: int) -> list[Prompt]:
        idx = torch.randint(len(self.prompts), (n,), generator=self.generator)
        return [self.prompts[i] for i in idx.tolist()]


class GroupedRollout:
    """Rolls out batches of prompts on one batched suite env.

    Args:
        suite: the task suite.
        num_envs: sub-envs in the batched env (``prompts_per_round * group_size``).
        chunk_size: actions executed open-loop per decision.
        seed: env seed.
    """

    def __init__(self, suite: Suite, *, num_envs: int, chunk_size: int, seed: int = 0) -> None:
        self.suite = suite
        self.num_envs = num_envs
        self.chunk_size = chunk_size
        self.env = suite.make_env(num_envs, chunk_size=chunk_size, seed=seed)
        self.max_decisions = suite.max_decisions(chunk_size)
        self.last_env_steps_per_s = 0.0
        self.last_decisions_per_s = 0.0

    def close(self) -> None:
        if not self.env.is_closed:
            self.env.close()

    def _reset_td(self, prompts: list[Prompt], group_ids: list[int]) -> TensorDict:
        def col(values):
            return torch.tensor(values, dtype=torch.int64).view(-1, 1)

        return TensorDict(
            {
                TASK_INDEX_KEY: col([p.task_index for p in prompts]),
                INIT_STATE_KEY: col([p.init_state_id for p in prompts]),
                GROUP_ID_KEY: col(group_ids),
            },
            batch_size=[len(prompts)],
        )

    @torch.no_grad()
    def run(self, policy, prompts: list[Prompt], group_ids: list[int], *, greedy: bool = False) -> TensorDict:
        """Roll out one episode per sub-env; returns ``[num_envs, T]`` with a ``valid`` mask.

        ``prompts`` and ``group_ids`` have one entry per sub-env. ``valid[i, t]``
        is True up to and including the decision at which episode ``i`` ended.
        """
        if len(prompts) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} prompts (one per sub-env), got {len(prompts)}")
        device = next(policy.parameters()).device

        def actor(td: TensorDictBase) -> TensorDictBase:
            out = policy.act(td.to(device), greedy=greedy).to("cpu")
            out.set(ACTION_KEY, out.get((VLA_ACTION_KEY, "chunk")))
            return out

        start = time.perf_counter()
        td = self.env.reset(self._reset_td(prompts, group_ids))
        data = self.env.rollout(
            self.max_decisions, actor, tensordict=td, auto_reset=False,
            break_when_any_done=False, break_when_all_done=True,
        )
        elapsed = max(time.perf_counter() - start, 1e-9)
        done = data.get(("next", "done")).squeeze(-1)
        # done entries after an episode's end are stale copies: valid until first done
        valid = (done.long().cumsum(-1) - done.long()) == 0
        data.set("valid", valid)
        decisions = int(valid.sum())
        self.last_decisions_per_s = decisions / elapsed
        self.last_env_steps_per_s = decisions * self.chunk_size / elapsed
        return data


def split_trajectories(data: TensorDict, *, first_traj_id: int, tokens_per_decision: int) -> list[TensorDict]:
    """Cut a ``[N, T]`` rollout into N trajectory TensorDicts of their valid decisions.

    Each decision row gets its trajectory's return (binary success), id and token
    count ``|a_i|``; the last row is marked done.
    """
    valid = data.get("valid")
    trajs = []
    for i in range(data.shape[0]):
        length = int(valid[i].sum())
        traj = data[i, :length].select(*DECISION_KEYS).clone()
        done = torch.zeros(length, 1, dtype=torch.bool)
        done[-1] = True
        traj.set(("next", "done"), done)
        success = bool(data[i, length - 1].get(("next", SUCCESS_KEY)).any())
        traj.set(RETURN_KEY, torch.full((length, 1), float(success)))
        traj.set(TRAJ_ID_KEY, torch.full((length, 1), first_traj_id + i, dtype=torch.int64))
        traj.set(TRAJ_TOKENS_KEY, torch.full((length, 1), length * tokens_per_decision, dtype=torch.int64))
        # the binary success reward, on the decision where it happened
        reward = torch.zeros(length, 1)
        reward[-1] = float(success)
        traj.set(("next", "reward"), reward)
        trajs.append(traj)
    return trajs


class DynamicSamplingBuffer:
    """A ``TensorDictReplayBuffer`` behind TorchRL's ``MCAdvantage`` group transform.

    Trajectories go in one at a time; complete groups with mixed outcomes (or
    every group when ``dynamic_sampling=False``) come out with advantages.
    :meth:`pop_groups` hands out whole groups and keeps the surplus for later.

    Args:
        group_size: trajectories per group (G).
        dynamic_sampling: drop groups whose G returns are all equal.
        capacity: decision rows the buffer can hold.
    """

    def __init__(self, group_size: int, *, dynamic_sampling: bool = True, capacity: int = 50_000) -> None:
        self.transform = MCAdvantage(
            grpo_size=group_size,
            prompt_key=GROUP_ID_KEY,
            trajectory_return="sum",
            # exclusive bounds on the group's mean return: drops all-0 and all-1 groups
            keep_return_bounds=(0.0, 1.0) if dynamic_sampling else None,
        )
        self.buffer = TensorDictReplayBuffer(
            storage=LazyTensorStorage(capacity), transform=self.transform
        )
        self._surplus: list[TensorDict] = []

    def extend(self, trajectories: list[TensorDict]) -> None:
        for traj in trajectories:
            self.buffer.extend(traj)

    def _drain(self) -> None:
        """Move what the transform wrote into the per-group surplus list."""
        if len(self.buffer) == 0:
            return
        rows = self.buffer[:]
        rows = rows.exclude("index") if "index" in rows.keys() else rows
        self.buffer.empty()
        gids = rows.get(GROUP_ID_KEY).view(-1)
        for gid in torch.unique_consecutive(gids).tolist():
            group = rows[gids == gid]
            self._surplus.append(_with_group_std(group))

    @property
    def num_groups(self) -> int:
        self._drain()
        return len(self._surplus)

    def pop_groups(self, k: int) -> TensorDict | None:
        """Up to ``k`` whole groups as one ``[rows]`` TensorDict (None if there are none)."""
        self._drain()
        taken, self._surplus = self._surplus[:k], self._surplus[k:]
        return torch.cat(taken, 0) if taken else None

    def stats(self, reset: bool = True) -> dict[str, float]:
        stats = self.transform.get_stats()
        if reset:
            self.transform.reset_stats()
        return stats


def attach_instructions(suite: Suite, td: TensorDict) -> TensorDict:
    """Sets ``language_instruction`` of each row from its ``task_index``."""
    tasks = suite.all_tasks()
    index = td.get(TASK_INDEX_KEY).view(-1).tolist()
    td.set("language_instruction", NonTensorStack(*[tasks[i].instruction for i in index]))
    return td


def _with_group_std(group: TensorDict) -> TensorDict:
    """Writes the std of the group's trajectory returns on every row (for Dr.GRPO)."""
    traj_ids = group.get(TRAJ_ID_KEY).view(-1)
    returns = group.get(RETURN_KEY).view(-1)
    per_traj = torch.stack([returns[traj_ids == t][0] for t in torch.unique(traj_ids)])
    std = per_traj.std() if per_traj.numel() > 1 else torch.zeros(())
    group.set(GROUP_STD_KEY, std.expand(group.shape[0], 1).clone())
    return group
