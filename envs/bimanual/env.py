"""The batched TorchRL env of the bimanual suite: the kit's env over :class:`BimanualSim` sub-envs.

Everything of the contract (chunked open-loop execution, one frame per
decision, reward on first success, frozen finished sub-envs, ``_step`` masks,
truncation, prompt ids) is :class:`~vla_grpo.envs.scene.env.SceneEnv`'s; the
bimanual suite names its simulator and its scene.
"""
from __future__ import annotations

import mujoco

from ..scene.env import SceneEnv, compile_xml
from .scene import build_mjcf
from .sim import BimanualSim
from .tasks import BimanualTask


def compile_model(task: BimanualTask, image_size: int) -> mujoco.MjModel:
    """The (cached) compiled MuJoCo model of a task's scene."""
    return compile_xml(build_mjcf(task.objects, offscreen=image_size))


class BimanualEnv(SceneEnv):
    """Batch-locked env of ``num_envs`` bimanual sub-envs executing ``chunk_size``-step 14-D chunks.

    Args:
        suite: the :class:`~vla_grpo.envs.bimanual.BimanualSuite`.
        num_envs: number of sub-envs.
        chunk_size: simulator steps per action chunk (``H``).
        seed: unused: initial states come from ``init_state_id`` and the
            simulation is deterministic.
    """

    sim_class = BimanualSim
    compile_model = staticmethod(compile_model)
