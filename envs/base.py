"""The env-suite contract every simulator suite in ``vla_grpo.envs`` implements.

A *suite* is a catalogue of language-conditioned tasks split into named splits
(``train`` plus held-out ones) and a factory of batched TorchRL environments.
The trainer only talks to this contract, never to a simulator:

* ``suite.tasks(split)`` lists :class:`TaskSpec` (name, instruction, family,
  step limit, number of fixed initial states).
* ``suite.make_env(num_envs, chunk_size=H, seed=...)`` returns a batch-locked
  TorchRL ``EnvBase`` of ``num_envs`` sub-environments that speaks the VLA
  schema (``torchrl.data.vla``):

  - reset input (per sub-env, in the reset TensorDict, declared in
    ``state_spec`` so batched/parallel wrappers carry them): ``task_index``
    (int64, index into ``suite.all_tasks()``), ``init_state_id`` (int64, which
    of the task's seeded initial states), ``group_id`` (int64, echoed back so
    grouped rollouts can be told apart), and the usual ``_reset`` mask;
  - observations: ``("observation", "image")`` uint8 ``[3, S, S]``,
    ``("observation", "state")`` float32 ``[state_dim]``,
    ``"language_instruction"`` (non-tensor str), ``"success"`` bool ``[1]``,
    plus the echoed ``task_index``, ``init_state_id``, ``group_id``;
  - action: ``"action"`` float32 ``[H, action_dim]`` in ``[-1, 1]``, one *action
    chunk* per policy decision, executed open-loop inside ``_step`` (stopping at
    the first success or at the step limit) with **one** rendered frame per
    decision. We don't stack ``torchrl.envs.MultiAction`` on a one-step env:
    it would render a frame on every sub-step, which is where the time goes;
  - ``reward`` = 1.0 on the decision where the task first succeeds, else 0;
    ``terminated`` on success, ``truncated`` when the task's step limit
    (in simulator steps) is reached, and ``_step`` partial-step masks are
    honoured (masked sub-envs keep their state);
  - a finished sub-env (done) stays frozen until its next reset: it ignores
    actions, is not re-rendered and reports reward 0. So a batch can be
    stepped whole while some episodes are over, which is what a
    ``ParallelEnv`` of batched workers needs (its ``_step`` mask can only
    select whole workers).

The same ``init_state_id`` of the same task must always give the same initial
state (and first frame); all G members of a group are reset with equal
``task_index``/``init_state_id``.

Nothing here imports anything else of ours: this module runs inside simulator
worker processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

TRAIN_SPLIT = "train"

#: Keys a suite env reads at reset and echoes as observations.
TASK_INDEX_KEY = "task_index"
INIT_STATE_KEY = "init_state_id"
GROUP_ID_KEY = "group_id"
SUCCESS_KEY = "success"
#: a MuJoCo suite's flag: this sub-env's episode ended because the simulation went unstable
UNSTABLE_KEY = "unstable"
PROMPT_KEYS = (TASK_INDEX_KEY, INIT_STATE_KEY, GROUP_ID_KEY)


def set_contract_specs(env: EnvBase, n: int, chunk_size: int, action_dim: int) -> None:
    """The specs every suite env shares: prompt ids as state, chunk action, reward, dones.

    Prompt ids are declared as state so batched/parallel wrappers carry them into reset.
    """
    env.state_spec = Composite(
        **{k: Unbounded(shape=(n, 1), dtype=torch.int64) for k in PROMPT_KEYS}, shape=(n,)
    )
    env.action_spec = Bounded(-1.0, 1.0, shape=(n, chunk_size, action_dim))
    env.reward_spec = Unbounded(shape=(n, 1))
    env.done_spec = Composite(
        **{k: Categorical(2, dtype=torch.bool, shape=(n, 1)) for k in ("done", "terminated", "truncated")},
        shape=(n,),
    )


def apply_reset_prompts(tensordict: TensorDictBase | None, ids: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """Copies the reset TensorDict's prompt ids into ``ids`` (``[n, 1]`` each) where ``_reset``.

    Returns the ``[n]`` reset mask (all True when the TensorDict has none).
    """
    mask = torch.ones(n, dtype=torch.bool)
    if tensordict is not None and tensordict.get("_reset", None) is not None:
        mask = tensordict.get("_reset").reshape(n)
    for key in PROMPT_KEYS:
        value = None if tensordict is None else tensordict.get(key, None)
        if value is not None:
            ids[key] = torch.where(mask[:, None], value.reshape(n, 1).long(), ids[key])
    return mask


@dataclass(frozen=True)
class TaskSpec:
    """One language-conditioned task of a suite.

    Attributes:
        name: unique name within the suite (``"spatial/bowl_between_plate_mug"``).
        instruction: the language instruction shown to the policy.
        split: the split it belongs to (``"train"``, ``"unseen_spatial"``, ...).
        family: task family (``"spatial"``, ``"object"``, ``"goal"``, ``"toy"``).
        max_steps: episode step limit in simulator (low-level) steps.
        num_init_states: size of the task's fixed, seeded pool of initial states.
        phrasings: the ways this task is asked (the first is ``instruction``); a
            prompt picks one by index. Empty: only ``instruction``.
        held_out_phrasings: rewordings kept out of every demo, SFT batch and
            rollout of this task; the ``paraphrase`` split asks them.
    """

    name: str
    instruction: str
    split: str
    family: str
    max_steps: int
    num_init_states: int
    phrasings: tuple[str, ...] = ()
    held_out_phrasings: tuple[str, ...] = ()

    def phrasing(self, index: int) -> str:
        """Phrasing ``index`` (modulo their number) of the task; ``instruction`` when it has none."""
        return self.phrasings[index % len(self.phrasings)] if self.phrasings else self.instruction

    @property
    def num_phrasings(self) -> int:
        return max(1, len(self.phrasings))


class Suite:
    """Base class of a task suite: task catalogue + batched env factory.

    Subclasses set ``action_dim``, ``state_dim``, ``image_size`` and implement
    :meth:`all_tasks` and :meth:`make_env`.
    """

    name: str = "suite"
    action_dim: int
    state_dim: int
    image_size: int
    #: frames come from MuJoCo's offscreen GL (EGL/OSMesa): training checks, at start-up, that one
    #: renders (in a subprocess, :mod:`vla_grpo.glcheck`). False for a suite that draws without GL.
    renders_offscreen: bool = True

    def all_tasks(self) -> list[TaskSpec]:
        """Every task of the suite, in a fixed order (``task_index`` order)."""
        raise NotImplementedError

    def make_env(self, num_envs: int, *, chunk_size: int, seed: int = 0) -> EnvBase:
        """A batch-locked env of ``num_envs`` sub-envs executing ``chunk_size``-step chunks."""
        raise NotImplementedError

    @property
    def splits(self) -> list[str]:
        """Split names, ``train`` first, then held-out splits in catalogue order."""
        seen: list[str] = [TRAIN_SPLIT]
        for task in self.all_tasks():
            if task.split not in seen:
                seen.append(task.split)
        return seen

    def tasks(self, split: str) -> list[TaskSpec]:
        """Tasks of one split; a one-line error names the split if it is unknown."""
        tasks = [t for t in self.all_tasks() if t.split == split]
        if not tasks:
            raise ValueError(
                f"suite {self.name!r} has no split {split!r}; expected one of {self.splits}"
            )
        return tasks

    def task_index(self, name: str) -> int:
        """Index of a task in :meth:`all_tasks` by name."""
        for i, task in enumerate(self.all_tasks()):
            if task.name == name:
                return i
        raise KeyError(f"suite {self.name!r} has no task {name!r}")

    def max_decisions(self, chunk_size: int) -> int:
        """Policy decisions needed to reach the longest step limit with ``chunk_size`` chunks."""
        longest = max(t.max_steps for t in self.all_tasks())
        return -(-longest // chunk_size)
