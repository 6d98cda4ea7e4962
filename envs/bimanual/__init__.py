"""RoboTwin-2.0-style bimanual suite on MuJoCo: two top-down grippers, ten tasks.

``BimanualSuite`` implements :class:`vla_grpo.envs.base.Suite` on the scene
kit's parts, hand, renderer and env (:mod:`vla_grpo.envs.scene`): seen and
unseen variants of ten two-arm tasks over short / medium / long horizons,
seeded initial states, scripted experts, 14-D actions and one agent-view
frame per policy decision.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering unless the user chose a backend

from .env import BimanualEnv  # noqa: E402
from .expert import BimanualExpert  # noqa: E402
from .sim import BimanualSim  # noqa: E402
from .suite import BimanualSuite  # noqa: E402

__all__ = ["BimanualSuite", "BimanualEnv", "BimanualExpert", "BimanualSim"]
