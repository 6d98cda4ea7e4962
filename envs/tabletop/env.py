"""The batched TorchRL env of the tabletop suite: the kit's env over :class:`~.sim.TabletopSim` sub-envs.

Everything of the contract (chunked open-loop execution, one frame per
decision, reward on first success, frozen finished sub-envs, ``_step`` masks,
truncation, prompt ids) is :class:`~vla_grpo.envs.scene.env.SceneEnv`'s; the
tabletop names its simulator and its scene.
"""
from __future__ import annotations

import mujoco

from ..scene.env import SceneEnv, compile_xml
from .scene import build_mjcf
from .sim import TabletopSim
from .tasks import TabletopTask


def compile_model(task: TabletopTask, image_size: int) -> mujoco.MjModel:
    """The (cached) compiled MuJoCo model of a task's scene."""
    return compile_xml(build_mjcf(task.objects, offscreen=image_size))


class TabletopEnv(SceneEnv):
    """Batch-locked env of ``num_envs`` tabletop sub-envs executing ``chunk_size``-step 7-D chunks.

    Args:
        suite: the :class:`~vla_grpo.envs.tabletop.TabletopSuite` (task catalogue, image size, cameras).
        num_envs: number of sub-envs.
        chunk_size: simulator steps per action chunk (``H``).
        seed: unused: initial states come from ``init_state_id`` and the
            simulation is deterministic.
    """

    sim_class = TabletopSim
    compile_model = staticmethod(compile_model)
