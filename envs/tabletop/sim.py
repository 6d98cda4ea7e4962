"""Physics of one tabletop sub-environment: a servoed hand, two fingers, a grasp, success.

The hand rides three slide joints (x, y, z; no rotation) under stiff position
+ velocity servos, and its two fingers are slide joints driven by position
actuators, so the hand pushes objects and the fingers stop on contact. A
control step moves the hand target by at most :data:`MAX_DELTA` per axis from
where the hand is, interpolated over :data:`SUBSTEPS` physics steps.

**Grasp (documented simplification).** When the gripper is commanded closed
and *both* fingers touch the same graspable object, with the hand over it,
the object is attached to the hand and follows it until the gripper opens
(see :mod:`vla_grpo.envs.scene.hand`). Everything else --
fingers closing, objects resting, pushing, falling into a basket -- is plain
simulation, and success is computed from the simulated state.
"""
from __future__ import annotations

import mujoco
import numpy as np

from ..scene.hand import Hand, pin_object
from ..scene.mjcf import BASKET_INNER, BASKET_WALL
from ..scene.sim import MAX_DELTA, SUBSTEPS, SceneSim
from .tasks import FRONT_Y, LIFT_HEIGHT, TabletopTask

#: reachable box of the tool centre point (between the finger tips)
WORKSPACE_LO = np.array([-0.3, -0.24, 0.004])
WORKSPACE_HI = np.array([0.3, 0.24, 0.3])
STATE_DIM = 8


class TabletopSim(SceneSim):
    """One task's MuJoCo model and data, stepped one control step at a time.

    Args:
        task: the task this simulator runs.
        model: the compiled model of the task's scene (shared read-only).
    """

    def __init__(self, task: TabletopTask, model: mujoco.MjModel) -> None:
        super().__init__(task, model)
        self.hands = (Hand(model),)
        #: camera ids: (agent view, wrist)
        self.cameras = (int(model.camera("agentview").id), self.hand.camera)
        self.steps = 0

    @property
    def hand(self) -> Hand:
        return self.hands[0]

    def _hand_layout_keys(self) -> tuple[str, ...]:
        return ("hand",)

    @property
    def attached(self) -> str | None:
        """Key of the object the hand holds, if any."""
        return self.hand.attached

    @property
    def tcp(self) -> np.ndarray:
        """Tool centre point: between the finger tips (world frame)."""
        return self.hand.tcp(self.data)

    def extent(self, key: str) -> np.ndarray:
        """World-axis-aligned half extents of an object's (possibly rotated) collision box."""
        kind = self.task.kind(key)
        half = np.array(kind.collision_half)
        if kind.round:
            return half  # an octagon is near round: rotation barely changes it
        rot = self.data.xmat[self.model.body(key).id].reshape(3, 3)
        return np.abs(rot) @ half

    @property
    def finger_q(self) -> np.ndarray:
        """Closing of each finger, 0 (open) to ``FINGER_CLOSED``."""
        return self.hand.finger_q(self.data)

    def proprio(self) -> np.ndarray:
        """LIBERO-shaped proprio state: tcp xyz, orientation (locked: zeros), finger qpos x2."""
        out = np.zeros(STATE_DIM, dtype=np.float32)
        out[:3] = self.tcp
        out[6:] = self.finger_q
        return out

    # -- dynamics --------------------------------------------------------
    def step(self, action: np.ndarray) -> None:
        """One control step: move the hand by ``action[:3] * MAX_DELTA``, gripper by ``action[6]``.

        ``action[3:6]`` (rotation) is accepted and ignored: the hand keeps a
        fixed, top-down orientation. ``action[6] > 0`` closes the gripper.
        """
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        m, d = self.model, self.data
        close = self.hand.command(d, a, MAX_DELTA, WORKSPACE_LO, WORKSPACE_HI, SUBSTEPS)
        for k in range(1, SUBSTEPS + 1):
            self.hand.servo(d, k / SUBSTEPS)
            if self.hand.attached is not None:
                self._carry()
            mujoco.mj_step(m, d)
        if close and self.hand.attached is None:
            self.hand.try_grasp(m, d, self._key_of_body, self._can_grasp, self._qadr.__getitem__)
        self.steps += 1

    def _carry(self) -> None:
        """Pin the held object to the hand (pose and velocity) for the next substep."""
        hand, d = self.hand, self.data
        pin_object(d, self._qadr[hand.attached], self._dadr[hand.attached], hand.tcp(d) + hand.offset,
                   hand.quat, hand.velocity(d))

    def _can_grasp(self, key: str, tcp: np.ndarray) -> bool:
        """The hand must be over the object (tool centre inside its footprint).

        So closed fingers pushing an object from behind don't pick it up.
        """
        adr = self._qadr[key]
        hx, hy, _ = self.task.kind(key).collision_half
        dx, dy = np.abs(self.data.qpos[adr : adr + 2] - tcp[:2])
        return bool(dx < hx + 0.01 and dy < hy)

    # -- task ------------------------------------------------------------
    def success(self) -> bool:
        """Whether the task's goal holds in the current simulated state."""
        goal = self.task.goal
        if goal.verb == "lift":
            return self.bottom(goal.obj) > LIFT_HEIGHT
        if self.attached == goal.obj:
            return False  # placing means letting go
        p = self.pos(goal.obj)
        if goal.verb == "push_front":
            return bool(p[1] < FRONT_Y and self.bottom(goal.obj) < 0.01)
        q = self.pos(goal.target)
        dx, dy = abs(p[0] - q[0]), abs(p[1] - q[1])
        if goal.verb == "place_in":
            inside = max(dx, dy) < BASKET_INNER - 0.01
            return bool(inside and self.bottom(goal.obj) < 2 * BASKET_WALL + 0.02)
        if goal.verb == "place_on":
            half = self.task.kind(goal.target).collision_half
            on_top = -0.01 < self.bottom(goal.obj) - self.top(goal.target) < 0.015
            return bool(dx < half[0] and dy < half[1] and on_top)
        raise ValueError(f"unknown goal verb {goal.verb!r} in task {self.task.spec.name!r}")
