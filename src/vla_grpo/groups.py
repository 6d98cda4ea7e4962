"""From rollouts to trainable groups: trajectory splitting, binary rewards, ids, dynamic sampling.

A round's ``[N, T]`` rollout is cut into N trajectories of their valid
decisions, each rewarded 1 if its episode succeeded (the reward on the decision
where it happened, the return on every decision). The trajectories go through
TorchRL's ``MCAdvantage`` replay-buffer transform (:class:`DynamicSamplingBuffer`):
it waits for the G members of a group, drops the group if all outcomes are
equal (dynamic sampling) and writes the group-normalised advantage
``(R - mean) / std`` on every decision. Group and trajectory ids come from
:class:`IdAllocator`, unique across DDP ranks.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import NonTensorStack, TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives.llm import MCAdvantage

from vla_grpo.keys import (
    GROUP_ID_KEY,
    GROUP_STD_KEY,
    INIT_STATE_KEY,
    INSTRUCTION_KEY,
    RETURN_KEY,
    SUCCESS_KEY,
    TASK_INDEX_KEY,
    TRAJ_ID_KEY,
    TRAJ_TOKENS_KEY,
    UNSTABLE_KEY,
    VLA_ACTION_KEY,
)

#: a token head's trained ``vla_action`` entries (``policy.action_train_keys``)
TOKEN_ACTION_KEYS = ("tokens", "log_probs")


def decision_keys(action_keys: Sequence[str] = TOKEN_ACTION_KEYS) -> tuple:
    """What a stored decision keeps of a rollout step: the observation, the policy's ``vla_action``
    entries ``action_keys`` (``policy.action_train_keys``), ids, reward and done. Instructions stay out:
    non-tensor entries make the tensor storage crawl; :meth:`DynamicSamplingBuffer.pop_groups` restores them.
    """
    return ("observation", *[(VLA_ACTION_KEY, key) for key in action_keys], GROUP_ID_KEY, TASK_INDEX_KEY,
            INIT_STATE_KEY, ("next", "reward"), ("next", "done"))


#: what a token head's stored decision keeps
DECISION_KEYS = decision_keys()


class IdAllocator:
    """Ids unique across DDP ranks: rank ``r`` of ``W`` hands out ``r, r + W, r + 2W, ...``."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size
        self.count = 0

    def take(self, n: int) -> list[int]:
        ids = [(self.count + i) * self.world_size + self.rank for i in range(n)]
        self.count += n
        return ids

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


def split_trajectories(data: TensorDict, traj_ids: list[int], *, tokens_per_decision: int,
                       action_keys: Sequence[str] = TOKEN_ACTION_KEYS) -> list[TensorDict]:
    """Cut a ``[N, T]`` rollout into N trajectory TensorDicts of their valid decisions.

    Each decision row keeps :func:`decision_keys` of ``action_keys`` and gets its trajectory's
    return (binary success), id (``traj_ids[i]``) and token count ``|a_i|`` (decisions x
    ``tokens_per_decision``, the entries of the policy's log-probs per decision); the last row is marked done.
    """
    keys = decision_keys(action_keys)
    valid = data.get("valid")
    if len(traj_ids) != data.shape[0]:
        raise ValueError(f"expected {data.shape[0]} trajectory ids (one per sub-env), got {len(traj_ids)}")
    trajs = []
    for i, traj_id in enumerate(traj_ids):
        length = int(valid[i].sum())
        traj = data[i, :length].select(*keys).clone()
        done = torch.zeros(length, 1, dtype=torch.bool)
        done[-1] = True
        traj.set(("next", "done"), done)
        success = bool(data[i, length - 1].get(("next", SUCCESS_KEY)).any())
        traj.set(RETURN_KEY, torch.full((length, 1), float(success)))
        traj.set(TRAJ_ID_KEY, torch.full((length, 1), traj_id, dtype=torch.int64))
        traj.set(TRAJ_TOKENS_KEY, torch.full((length, 1), length * tokens_per_decision, dtype=torch.int64))
        # the binary success reward, on the decision where it happened
        reward = torch.zeros(length, 1)
        reward[-1] = float(success)
        traj.set(("next", "reward"), reward)
        trajs.append(traj)
    return trajs


def trajectory_returns(trajectories: list[TensorDict]) -> torch.Tensor:
    """``[len(trajectories)]`` binary returns."""
    return torch.tensor([float(t.get(RETURN_KEY)[0]) for t in trajectories])


def unstable_episodes(data: TensorDict) -> int:
    """Episodes of a ``[N, T]`` rollout that a diverged simulation ended (0 for suites without the flag)."""
    unstable = data.get(("next", UNSTABLE_KEY), None)
    return 0 if unstable is None else int((unstable.squeeze(-1) & data.get("valid")).any(-1).sum())


class DynamicSamplingBuffer:
    """A ``TensorDictReplayBuffer`` behind TorchRL's ``MCAdvantage`` group transform.

    Trajectories go in one at a time, each with the instruction it was rolled
    out with; complete groups with mixed outcomes (or every group when
    ``dynamic_sampling=False``) come out with advantages. :meth:`pop_groups`
    hands out whole groups, their instructions restored, and keeps the surplus
    for later.

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
        self.group_size = group_size
        self._instructions: dict[int, str] = {}  # trajectory id -> instruction, until its group is popped or dropped
        self._open: dict[int, list[int]] = {}  # group id -> its trajectory ids so far, until the group is complete
        self._surplus: list[TensorDict] = []

    def extend(self, trajectories: list[TensorDict], instructions: Sequence[str] | None = None) -> None:
        """Add trajectories; ``instructions[i]`` is what ``trajectories[i]`` was asked (restored on pop)."""
        if instructions is not None:
            if len(instructions) != len(trajectories):
                raise ValueError(f"expected {len(trajectories)} instructions, got {len(instructions)}")
            for traj, text in zip(trajectories, instructions, strict=True):
                self._instructions[int(traj.get(TRAJ_ID_KEY)[0])] = text
        for traj in trajectories:
            self._open.setdefault(int(traj.get(GROUP_ID_KEY)[0]), []).append(int(traj.get(TRAJ_ID_KEY)[0]))
            self.buffer.extend(traj)

    def _drain(self) -> None:
        """Move what the transform wrote into the per-group surplus list; forget the dropped groups' instructions."""
        kept: set[int] = set()
        if len(self.buffer) > 0:
            rows = self.buffer[:]
            rows = rows.exclude("index") if "index" in rows.keys() else rows
            self.buffer.empty()
            gids = rows.get(GROUP_ID_KEY).view(-1)
            for gid in torch.unique_consecutive(gids).tolist():
                self._surplus.append(_with_group_std(rows[gids == gid]))
                kept.add(gid)
        for gid in [g for g, members in self._open.items() if len(members) >= self.group_size]:
            members = self._open.pop(gid)
            if gid not in kept:  # dropped by dynamic sampling: its instructions are never asked for
                for tid in members:
                    self._instructions.pop(tid, None)

    @property
    def num_groups(self) -> int:
        self._drain()
        return len(self._surplus)

    def pop_groups(self, k: int) -> TensorDict | None:
        """Up to ``k`` whole groups as one ``[rows]`` TensorDict (None if there are none)."""
        self._drain()
        taken, self._surplus = self._surplus[:k], self._surplus[k:]
        if not taken:
            return None
        rows = torch.cat(taken, 0)
        ids = rows.get(TRAJ_ID_KEY).view(-1).tolist()
        if ids and ids[0] in self._instructions:
            rows.set(INSTRUCTION_KEY, NonTensorStack(*[self._instructions[i] for i in ids]))
            for i in set(ids):
                self._instructions.pop(i, None)
        return rows

    def state_dict(self) -> dict:
        """The held (surplus) groups and their instructions, as plain tensors and strings.

        Taken between GRPO steps, when every rolled-out group is complete (a round rolls out
        whole groups), so the group transform holds nothing half-done.
        """
        self._drain()
        if self._open:
            raise RuntimeError("DynamicSamplingBuffer.state_dict() with incomplete groups: take it between steps")
        return {"surplus": [(g.to_dict(), g.shape[0]) for g in self._surplus],
                "instructions": dict(self._instructions)}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.empty()
        self._open = {}
        self._surplus = [TensorDict(d, batch_size=[n]) for d, n in state["surplus"]]
        self._instructions = {int(k): str(v) for k, v in state["instructions"].items()}

    def stats(self, reset: bool = True) -> dict[str, float]:
        stats = self.transform.get_stats()
        if reset:
            self.transform.reset_stats()
        return stats


def _with_group_std(group: TensorDict) -> TensorDict:
    """Writes the std of the group's trajectory returns on every row (for Dr.GRPO)."""
    traj_ids = group.get(TRAJ_ID_KEY).view(-1)
    returns = group.get(RETURN_KEY).view(-1)
    per_traj = torch.stack([returns[traj_ids == t][0] for t in torch.unique(traj_ids)])
    std = per_traj.std() if per_traj.numel() > 1 else torch.zeros(())
    group.set(GROUP_STD_KEY, std.expand(group.shape[0], 1).clone())
    return group


__all__ = [
    "DECISION_KEYS", "DynamicSamplingBuffer", "IdAllocator", "decision_keys", "split_trajectories", "trajectory_returns",
    "unstable_episodes",
]
