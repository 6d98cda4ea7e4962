"""The batched TorchRL env of the suite contract (:mod:`vla_grpo.envs.base`) over any scene suite's simulators.

Each of the ``num_envs`` sub-envs owns one simulator (the suite env's
``sim_class``) per task it has been reset to (models are compiled once per
process and shared, data is per sub-env), so a batch can mix tasks and
switching back to a task costs nothing. One :class:`.render.FrameRenderer`
draws every sub-env, once per decision. A suite's env subclasses
:class:`SceneEnv` and names its simulator and scene compiler (LIBERO's
overrides how a sub-env gets its simulator and frames instead).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mujoco
import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, NonTensor, Unbounded
from torchrl.envs import EnvBase

from ..base import (
    INIT_STATE_KEY,
    PROMPT_KEYS,
    SUCCESS_KEY,
    TASK_INDEX_KEY,
    UNSTABLE_KEY,
    apply_reset_prompts,
    set_contract_specs,
)
from .render import FrameRenderer
from .sim import SceneSim, diverged

IMAGE_KEY = ("observation", "image")
WRIST_IMAGE_KEY = ("observation", "wrist_image")
STATE_KEY = ("observation", "state")
INSTRUCTION_KEY = "language_instruction"

#: compiled models, one per scene XML (scene and framebuffer size) and process
_MODELS: dict[str, mujoco.MjModel] = {}


def compile_xml(xml: str) -> mujoco.MjModel:
    """The compiled MuJoCo model of a scene XML, compiled once per process (any suite)."""
    model = _MODELS.get(xml)
    if model is None:
        model = _MODELS[xml] = mujoco.MjModel.from_xml_string(xml)
    return model


class SceneEnv(EnvBase):
    """Batch-locked env of ``num_envs`` scene sub-envs executing ``chunk_size``-step chunks.

    Subclasses set :attr:`sim_class` and :attr:`compile_model`.

    Args:
        suite: the scene suite (``task(i)``, ``all_tasks()``, ``expert(i)``, image size, ``wrist_camera``).
        num_envs: number of sub-envs.
        chunk_size: simulator steps per action chunk (``H``).
        seed: unused: initial states come from ``init_state_id`` and the
            simulation is deterministic.
    """

    #: the simulator of one sub-env: ``sim_class(task, model)``
    sim_class: type[SceneSim]
    #: the compiler of a task's scene: ``compile_model(task, image_size) -> MjModel`` (a staticmethod)
    compile_model: Callable[[Any, int], mujoco.MjModel]

    batch_locked = True

    def __init__(self, suite, *, num_envs: int, chunk_size: int, seed: int = 0) -> None:
        if num_envs < 1 or chunk_size < 1:
            raise ValueError(f"`num_envs` and `chunk_size` must be >= 1 (got {num_envs}, {chunk_size})")
        super().__init__(batch_size=torch.Size([num_envs]))
        self.suite = suite
        self.chunk_size = int(chunk_size)
        self._make_specs()
        n, s = num_envs, suite.image_size
        self._renderer = FrameRenderer(s)
        self._sims: list[dict[int, SceneSim]] = [{} for _ in range(n)]
        self.sims: list[SceneSim | None] = [None] * n
        self._images = np.zeros((n, s, s, 3), dtype=np.uint8)
        self._wrist = np.zeros((n, s, s, 3), dtype=np.uint8) if suite.wrist_camera else None
        self._success = np.zeros(n, dtype=bool)
        #: sub-envs whose episode ended because the simulation went unstable (see ``_run_chunk``)
        self._unstable = np.zeros(n, dtype=bool)
        self._ids = {k: torch.zeros(n, 1, dtype=torch.int64) for k in PROMPT_KEYS}

    def _make_specs(self) -> None:
        n, s = self.batch_size[0], self.suite.image_size
        ids = {k: Unbounded(shape=(n, 1), dtype=torch.int64) for k in PROMPT_KEYS}
        obs = {"image": Unbounded(shape=(n, 3, s, s), dtype=torch.uint8),
               "state": Unbounded(shape=(n, self.suite.state_dim), dtype=torch.float32)}
        if self.suite.wrist_camera:
            obs["wrist_image"] = Unbounded(shape=(n, 3, s, s), dtype=torch.uint8)
        self.observation_spec = Composite(
            observation=Composite(**obs, shape=(n,)),
            language_instruction=NonTensor(shape=(n,), example_data="put the bowl on the plate"),
            success=Categorical(2, dtype=torch.bool, shape=(n, 1)),
            unstable=Categorical(2, dtype=torch.bool, shape=(n, 1)),
            **ids,
            shape=(n,),
        )
        set_contract_specs(self, n, self.chunk_size, self.suite.action_dim)

    # -- helpers -----------------------------------------------------------
    def _sim(self, i: int, task_index: int) -> SceneSim:
        sim = self._sims[i].get(task_index)
        if sim is None:
            task = self.suite.task(task_index)
            sim = self._sims[i][task_index] = self.sim_class(task, self.compile_model(task, self.suite.image_size))
        return sim

    def _render(self, i: int) -> None:
        sim = self.sims[i]
        self._renderer.render(sim.model, sim.data, sim.cameras[0], self._images[i])
        if self._wrist is not None:
            self._renderer.render(sim.model, sim.data, sim.cameras[1], self._wrist[i])

    def _max_steps(self, i: int) -> int:
        return self.sims[i].task.spec.max_steps

    def _dones(self) -> dict[str, torch.Tensor]:
        steps = np.array([0 if s is None else s.steps for s in self.sims])
        limit = np.array([1 if s is None else s.task.spec.max_steps for s in self.sims])
        success = torch.from_numpy(self._success.copy()).unsqueeze(-1)
        truncated = torch.from_numpy((steps >= limit) & ~self._success).unsqueeze(-1)
        return {"terminated": success, "truncated": truncated, "done": success | truncated}

    def _obs(self) -> TensorDict:
        n = self.batch_size[0]
        tasks = self.suite.all_tasks()
        instructions = [tasks[t].instruction for t in self._ids[TASK_INDEX_KEY].view(-1).tolist()]
        state = np.stack([np.zeros(self.suite.state_dim, np.float32) if s is None else s.proprio() for s in self.sims])
        # numpy's HWC -> CHW copy is ~100x faster than torch's permute().contiguous() on uint8
        obs = {"image": torch.from_numpy(np.ascontiguousarray(self._images.transpose(0, 3, 1, 2))),
               "state": torch.from_numpy(state)}
        if self._wrist is not None:
            obs["wrist_image"] = torch.from_numpy(np.ascontiguousarray(self._wrist.transpose(0, 3, 1, 2)))
        return TensorDict(
            {"observation": obs, INSTRUCTION_KEY: NonTensorStack(*instructions),
             SUCCESS_KEY: torch.from_numpy(self._success.copy()).unsqueeze(-1),
             UNSTABLE_KEY: torch.from_numpy(self._unstable.copy()).unsqueeze(-1),
             **{k: v.clone() for k, v in self._ids.items()}},
            batch_size=[n],
        )

    # -- EnvBase -----------------------------------------------------------
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = apply_reset_prompts(tensordict, self._ids, self.batch_size[0])
        num_tasks = len(self.suite.all_tasks())
        for i in mask.nonzero().view(-1).tolist():
            t = int(self._ids[TASK_INDEX_KEY][i])
            if not 0 <= t < num_tasks:
                raise ValueError(f"task_index {t} is out of range; expected 0 <= task_index < {num_tasks}")
            self.sims[i] = self._sim(i, t)
            self.sims[i].reset(int(self._ids[INIT_STATE_KEY][i]))
            self._success[i] = self._unstable[i] = False
            self._render(i)
        out = self._obs()
        out.update(self._dones())
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        n = self.batch_size[0]
        actions = tensordict.get("action").detach().to("cpu", torch.float64).reshape(n, self.chunk_size, -1).numpy()
        active = tensordict.get("_step", None)
        active = torch.ones(n, dtype=torch.bool) if active is None else active.reshape(n)
        was_success = self._success.copy()
        for i in active.nonzero().view(-1).tolist():
            if self.sims[i] is None:
                raise RuntimeError(f"sub-env {i} was stepped before its first reset")
            if self._run_chunk(i, actions[i]):
                self._render(i)
        out = self._obs()
        out["reward"] = torch.from_numpy(self._success & ~was_success).float().unsqueeze(-1)
        out.update(self._dones())
        return out

    def _run_chunk(self, i: int, chunk: np.ndarray) -> bool:
        """Execute one chunk on sub-env ``i`` until success or its step limit; False if it was done.

        An episode whose simulation went unstable (MuJoCo's NaN/Inf warnings;
        MuJoCo then resets the state itself) ends there as a failure: truncated,
        never a success.
        """
        sim, limit = self.sims[i], self._max_steps(i)
        if self._success[i] or sim.steps >= limit:
            return False  # a finished episode stays frozen until reset
        for action in chunk:
            sim.step(action)
            if diverged(sim.data):
                sim.steps = limit
                self._unstable[i] = True
                break
            if sim.success():
                self._success[i] = True
                break
            if sim.steps >= limit:
                break
        return True

    def _set_seed(self, seed: int | None) -> None:
        # initial states come from (task, init_state_id) and MuJoCo is deterministic
        return None

    # -- extras ------------------------------------------------------------
    def expert_chunk(self) -> torch.Tensor:
        """The scripted expert's next action chunk for every sub-env, ``[num_envs, H, action_dim]``.

        Finished or never-reset sub-envs get zeros.
        """
        out = np.zeros((self.batch_size[0], self.chunk_size, self.suite.action_dim), np.float32)
        for i, sim in enumerate(self.sims):
            if sim is not None and not self._success[i] and sim.steps < sim.task.spec.max_steps:
                out[i] = self.suite.expert(int(self._ids[TASK_INDEX_KEY][i]))(sim, self.chunk_size)
        return torch.from_numpy(out)

    def close(self, *, raise_if_closed: bool = True) -> None:
        self._renderer.close()
        super().close(raise_if_closed=raise_if_closed)
