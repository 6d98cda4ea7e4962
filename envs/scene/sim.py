"""One task's MuJoCo model and data with its objects and hands: the simulator every scene suite's sim extends.

:class:`SceneSim` resets a task's scene to a seeded initial layout (objects
resting on the table, hands at their start poses), clones itself for
look-ahead and reads object poses; a suite's simulator adds its hands, its
control step and its success check. A control step moves a hand's target by
at most :data:`MAX_DELTA` per axis, interpolated over :data:`SUBSTEPS`
physics steps (:meth:`.hand.Hand.command`).
"""
from __future__ import annotations

import copy

import mujoco
import numpy as np

from .hand import Hand

#: physics steps (of mjcf.TIMESTEP) per control step: 50 Hz control
SUBSTEPS = 2
#: MuJoCo's instability warnings: NaN, Inf or huge values in the state or its acceleration
_UNSTABLE = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQACC)


def diverged(data: mujoco.MjData) -> bool:
    """Whether MuJoCo found the simulation unstable since the last ``mj_resetData``.

    MuJoCo then resets the state to the model's default pose by itself and goes
    on, so an episode would continue from a scene it never reached (and could
    even count a success there). Seen twice in one of six 300-step bimanual
    GRPO runs (MUJOCO_LOG.TXT: huge QACC).
    """
    return any(data.warning[w].number for w in _UNSTABLE)


#: hand displacement per control step at |action| = 1 (metres, per axis)
MAX_DELTA = 0.012


def object_addresses(
    model: mujoco.MjModel, objects
) -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[int, str]]:
    """Where each scene object lives in the model.

    Returns ``(qpos address, dof address, mocap id, key of graspable body id)``;
    baskets are mocap bodies (no joint), every other object has a free joint.
    """
    qadr: dict[str, int] = {}
    dadr: dict[str, int] = {}
    mocap: dict[str, int] = {}
    key_of_body: dict[int, str] = {}
    for obj in objects:
        body = model.body(obj.key)
        if obj.kind.shape == "basket":
            mocap[obj.key] = int(body.mocapid[0])
            continue
        joint = model.joint(obj.key)
        qadr[obj.key] = int(joint.qposadr[0])
        dadr[obj.key] = int(joint.dofadr[0])
        if obj.kind.graspable:
            key_of_body[int(body.id)] = obj.key
    return qadr, dadr, mocap, key_of_body


class SceneSim:
    """One task's MuJoCo model and data with its objects and hands: what every suite's sim shares.

    Subclasses set ``self.hands`` (a tuple of :class:`~.hand.Hand`) and ``cameras``,
    and implement the step and success of their suite.

    Args:
        task: the task this simulator runs (``objects``, ``kind(key)``, ``init_layout(id)``).
        model: the compiled model of the task's scene (shared read-only).
    """

    hands: tuple[Hand, ...]

    def __init__(self, task, model: mujoco.MjModel) -> None:
        self.task = task
        self.model = model
        self.data = mujoco.MjData(model)
        self._qadr, self._dadr, self._mocap, self._key_of_body = object_addresses(model, task.objects)
        self.steps = 0

    def _hand_layout_keys(self) -> tuple[str, ...]:
        """The keys of the hands' start poses in a task's initial layout, in ``hands`` order."""
        raise NotImplementedError

    # -- state -----------------------------------------------------------
    def reset(self, init_state_id: int) -> None:
        """Put the scene in the task's initial state ``init_state_id`` (objects resting on the table)."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        layout = self.task.init_layout(init_state_id)
        for obj in self.task.objects:
            x, y, yaw = layout[obj.key]
            if obj.key in self._mocap:
                d.mocap_pos[self._mocap[obj.key]] = (x, y, 0.0)
                continue
            adr = self._qadr[obj.key]
            # resting exactly on the table: nothing needs to settle
            d.qpos[adr : adr + 7] = (x, y, obj.kind.collision_half[2], np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        for hand, key in zip(self.hands, self._hand_layout_keys(), strict=True):
            hand.place(d, layout[key])
        self.steps = 0
        mujoco.mj_forward(m, d)

    def clone(self):
        """An independent copy (own ``MjData`` and hand states) for look-ahead, e.g. by the expert."""
        other = copy.copy(self)
        other.data = copy.copy(self.data)
        other.hands = tuple(h.copy() for h in self.hands)
        return other

    def pos(self, key: str) -> np.ndarray:
        """Centre of an object (world frame)."""
        if key in self._mocap:
            return self.data.mocap_pos[self._mocap[key]].copy()
        adr = self._qadr[key]
        return self.data.qpos[adr : adr + 3].copy()

    def bottom(self, key: str) -> float:
        return float(self.pos(key)[2] - self.task.kind(key).collision_half[2])

    def top(self, key: str) -> float:
        return float(self.pos(key)[2] + self.task.kind(key).collision_half[2])
