"""A learnable, simulator-free suite that runs anywhere: reach a coloured dot.

A point agent starts at the centre of a 2-D arena holding two coloured dots;
the instruction names one ("reach the red dot"). Each simulator step moves the
agent by ``step_scale * action``; the task succeeds when the agent is within
``success_tol`` (infinity norm) of the named dot. The image shows the agent and
both dots; the proprio state holds the agent and both dot positions, so the
task is learnable from the state alone and the image path is still exercised.

It is TorchRL's ``ToyVLAEnv`` tracking idea (reach a target exposed in the
state) reshaped to the suite contract of :mod:`vla_grpo.envs.base`: seeded
initial-state pools per task, task/state/group ids at reset, chunked actions
and a held-out split with unseen layouts. ``ToyVLAEnv`` itself samples its
target from one RNG stream and takes one-step actions, so it can't replay an
initial state by id; hence this small env of our own.

A uniformly random policy succeeds ~20-30% of the time at the defaults: enough
mixed GRPO groups from a cold start, and a clear margin to learn.
"""
from __future__ import annotations

import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, NonTensor, Unbounded
from torchrl.envs import EnvBase

from .base import (
    GROUP_ID_KEY,
    INIT_STATE_KEY,
    PROMPT_KEYS,
    TASK_INDEX_KEY,
    TRAIN_SPLIT,
    Suite,
    TaskSpec,
    apply_reset_prompts,
    set_contract_specs,
)

_COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60)}
_AGENT_RGB = (255, 255, 255)


class ToyReachSuite(Suite):
    """Two-dot reaching tasks: ``train`` layouts and an ``unseen_layout`` split.

    Args:
        image_size: side of the rendered square image.
        max_steps: step limit in simulator steps.
        success_tol: infinity-norm distance to the dot that counts as reached.
        step_scale: displacement per simulator step at action 1.
        num_init_states: fixed initial states per task.
    """

    name = "toy_reach"
    action_dim = 2
    renders_offscreen = False  # drawn with torch: no GL, no start-up render check
    state_dim = 6

    def __init__(
        self,
        image_size: int = 16,
        max_steps: int = 24,
        success_tol: float = 0.2,
        step_scale: float = 0.1,
        num_init_states: int = 64,
    ) -> None:
        if image_size < 8:
            raise ValueError(f"`image_size` must be >= 8 (got {image_size})")
        if max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1 (got {max_steps})")
        self.image_size = int(image_size)
        self.max_steps = int(max_steps)
        self.success_tol = float(success_tol)
        self.step_scale = float(step_scale)
        self.num_init_states = int(num_init_states)
        self._tasks = [
            TaskSpec(
                name=f"{split}/{colour}",
                instruction=f"reach the {colour} dot",
                split=split,
                family="toy",
                max_steps=self.max_steps,
                num_init_states=self.num_init_states,
            )
            for split in (TRAIN_SPLIT, "unseen_layout")
            for colour in _COLOURS
        ]

    def all_tasks(self) -> list[TaskSpec]:
        return list(self._tasks)

    def make_env(self, num_envs: int, *, chunk_size: int, seed: int = 0) -> EnvBase:
        return ToyReachEnv(self, num_envs=num_envs, chunk_size=chunk_size, seed=seed)

    def layout(self, task_index: torch.Tensor, init_state_id: torch.Tensor) -> torch.Tensor:
        """Dot positions ``[N, 2 dots, 2]`` of the given (task, state id) pairs.

        A pure function of the ids (one generator seeded per pair), so a state id
        is the same layout in every process; unseen-split tasks draw from a
        disjoint seed range.
        """
        out = torch.empty(task_index.numel(), 2, 2)
        for i, (t, s) in enumerate(zip(task_index.tolist(), init_state_id.tolist(), strict=False)):
            task = self._tasks[t]
            offset = 0 if task.split == TRAIN_SPLIT else 1_000_003
            gen = torch.Generator().manual_seed(offset + int(s))
            out[i] = torch.rand(2, 2, generator=gen) * 1.2 - 0.6
        return out


class ToyReachEnv(EnvBase):
    """Batch-locked env of ``num_envs`` reaching agents (see :class:`ToyReachSuite`)."""

    batch_locked = True

    def __init__(self, suite: ToyReachSuite, *, num_envs: int, chunk_size: int, seed: int = 0):
        super().__init__(batch_size=torch.Size([num_envs]))
        self.suite = suite
        self.chunk_size = int(chunk_size)
        n, s = num_envs, suite.image_size
        ids = {k: Unbounded(shape=(n, 1), dtype=torch.int64) for k in PROMPT_KEYS}
        self.observation_spec = Composite(
            observation=Composite(
                image=Unbounded(shape=(n, 3, s, s), dtype=torch.uint8),
                state=Unbounded(shape=(n, suite.state_dim)),
                shape=(n,),
            ),
            language_instruction=NonTensor(shape=(n,), example_data="reach the red dot"),
            success=Categorical(2, dtype=torch.bool, shape=(n, 1)),
            **ids,
            shape=(n,),
        )
        set_contract_specs(self, n, self.chunk_size, suite.action_dim)
        self._pos = torch.zeros(n, 2)
        self._dots = torch.zeros(n, 2, 2)
        self._steps = torch.zeros(n, 1, dtype=torch.int64)
        self._success = torch.zeros(n, 1, dtype=torch.bool)
        self._ids = {k: torch.zeros(n, 1, dtype=torch.int64) for k in PROMPT_KEYS}

    # -- helpers -----------------------------------------------------------
    def _target(self) -> torch.Tensor:
        colour = self._ids[TASK_INDEX_KEY].squeeze(-1) % 2  # tasks alternate red, green
        return self._dots[torch.arange(self.batch_size[0]), colour]

    def _render(self) -> torch.Tensor:
        n, s = self.batch_size[0], self.suite.image_size
        img = torch.zeros(n, 3, s, s, dtype=torch.uint8)
        rows = torch.arange(n)
        for points, rgb in (
            (self._dots[:, 0], _COLOURS["red"]),
            (self._dots[:, 1], _COLOURS["green"]),
            (self._pos, _AGENT_RGB),
        ):
            px = ((points.clamp(-1, 1) + 1) / 2 * (s - 1)).round().long()
            for c in range(3):
                img[rows, c, px[:, 1], px[:, 0]] = rgb[c]
        return img

    def _obs(self) -> TensorDict:
        n = self.batch_size[0]
        instr = [self.suite._tasks[t].instruction for t in self._ids[TASK_INDEX_KEY].view(-1).tolist()]
        state = torch.cat([self._pos, self._dots.flatten(1)], -1)
        return TensorDict(
            {
                "observation": {"image": self._render(), "state": state},
                "language_instruction": NonTensorStack(*instr),
                "success": self._success.clone(),
                **{k: v.clone() for k, v in self._ids.items()},
            },
            batch_size=[n],
        )

    # -- EnvBase -----------------------------------------------------------
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = apply_reset_prompts(tensordict, self._ids, self.batch_size[0])
        idx = mask.nonzero().squeeze(-1)
        if idx.numel():
            self._dots[idx] = self.suite.layout(
                self._ids[TASK_INDEX_KEY][idx].view(-1), self._ids[INIT_STATE_KEY][idx].view(-1)
            )
            self._pos[idx] = 0.0
            self._steps[idx] = 0
            self._success[idx] = False
        out = self._obs()
        out.update(self.full_done_spec.zero())
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        n = self.batch_size[0]
        chunk = tensordict.get("action").view(n, self.chunk_size, 2).clamp(-1, 1)
        active = tensordict.get("_step", torch.ones(n, dtype=torch.bool)).view(n, 1)
        was_success = self._success.clone()
        for h in range(self.chunk_size):
            moving = active & ~self._success & (self._steps < self.suite.max_steps)
            self._pos = torch.where(moving, (self._pos + self.suite.step_scale * chunk[:, h]).clamp(-1, 1), self._pos)
            self._steps = self._steps + moving.long()
            reached = ((self._pos - self._target()).abs() <= self.suite.success_tol).all(-1, keepdim=True)
            self._success = self._success | (moving & reached)
        out = self._obs()
        truncated = (self._steps >= self.suite.max_steps) & ~self._success
        out["reward"] = (self._success & ~was_success).float()
        out["terminated"] = self._success.clone()
        out["truncated"] = truncated
        out["done"] = self._success | truncated
        return out

    def _set_seed(self, seed: int | None) -> None:
        # Initial states come from the (task, state id) seeds and the dynamics are
        # deterministic: there is no other randomness to seed.
        return None


__all__ = ["ToyReachSuite", "ToyReachEnv", "GROUP_ID_KEY"]
