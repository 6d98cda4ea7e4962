"""The shared MuJoCo kit the scene suites (tabletop, bimanual, LIBERO) stand on; it knows none of them.

* :mod:`.mjcf` -- object kinds and scene objects, their MJCF bodies, the servoed
  two-finger hand's MJCF, the table-and-camera scene template;
* :mod:`.hand` -- one hand's addresses in a compiled model and its grasp;
* :mod:`.sim` -- :class:`~.sim.SceneSim`, one task's model and data with its
  objects and hands (reset to an initial layout, look-ahead clones, poses),
  and :func:`~.sim.diverged`;
* :mod:`.env` -- :class:`~.env.SceneEnv`, the batched TorchRL env of the suite
  contract over any suite's simulators;
* :mod:`.render` -- :class:`~.render.FrameRenderer`, one offscreen GL context per env;
* :mod:`.tasks` -- :class:`~.tasks.SceneTask`, :class:`~.tasks.Goal`, seeded initial states;
* :mod:`.suite` -- :class:`~.suite.SceneSuite`, a task catalogue with an env
  class and a cached scripted expert per task;
* :mod:`.expert` -- what scripted experts share: chunks planned on a
  look-ahead clone, dead-beat moves, transit heights;
* :mod:`.evaluate` -- (task, state) jobs played in padded env-sized batches, the
  per-task count (:class:`~.evaluate.SplitResult`), the one table renderer, and
  the scripted experts' report (``python -m vla_grpo.envs.<suite>``).

Like everything under ``vla_grpo.envs``, nothing here imports the trainer: it
runs inside simulator worker processes.
"""
from __future__ import annotations

import os

# Headless rendering unless the user chose a backend (render.py picks the context class itself
# when mujoco was imported first, e.g. by torchrl.envs).
os.environ.setdefault("MUJOCO_GL", "egl")
