"""Built-in LIBERO-style tabletop suite on MuJoCo (the default suite).

``TabletopSuite`` implements :class:`vla_grpo.envs.base.Suite` on the scene kit
(:mod:`vla_grpo.envs.scene`): seen and unseen Spatial / Object / Goal tasks on
a small primitive-geometry scene with a servoed two-finger gripper, seeded
initial states, scripted experts, and a fast batched env (one 128-px frame per
policy decision, rendered headless with EGL).
"""
from __future__ import annotations

import os

# Headless rendering unless the user chose a backend. (mujoco may already be imported,
# e.g. by torchrl.envs; the kit's render.py then still picks the EGL context class itself.)
os.environ.setdefault("MUJOCO_GL", "egl")

from .env import TabletopEnv  # noqa: E402
from .expert import TabletopExpert  # noqa: E402
from .sim import TabletopSim  # noqa: E402
from .suite import TabletopSuite  # noqa: E402

__all__ = ["TabletopSuite", "TabletopEnv", "TabletopExpert", "TabletopSim"]
