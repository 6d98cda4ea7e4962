"""Physics of one bimanual sub-environment: two of the kit's hands, shared grasps, success.

Each arm is the scene kit's servoed top-down hand (:class:`~vla_grpo.envs.scene.hand.Hand`),
stepped with the kit's per-step displacement and substeps; the 14-D action is
``[left 7 | right 7]``, each ``(dx, dy, dz, 3 ignored rotation dims, gripper)``.
Grasping is the hand's attach rule, per hand; an object may be held by
both hands at once (the pot, or a block mid-handover), and then follows the
mean of the two hands' grasp poses.
"""
from __future__ import annotations

import mujoco
import numpy as np

from ..scene.hand import Hand, pin_object
from ..scene.sim import MAX_DELTA, SUBSTEPS, SceneSim
from .scene import ARMS, HAMMER_HEAD, grasp_parts
from .tasks import LIFT_HEIGHT, REACH_X, BimanualTask

#: per-arm proprio: tcp xyz, orientation (locked: zeros), finger qpos x2
ARM_STATE_DIM = 8
STATE_DIM = 2 * ARM_STATE_DIM
ARM_ACTION_DIM = 7


def _yaw_rot(quat: np.ndarray) -> np.ndarray:
    """2x2 rotation of a (w, x, y, z) quaternion's yaw (objects stay upright)."""
    w, _, _, z = quat
    yaw = 2.0 * np.arctan2(z, w)
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


class BimanualSim(SceneSim):
    """One task's MuJoCo model and data with a left and a right hand.

    Args:
        task: the task this simulator runs.
        model: the compiled model of the task's scene (shared read-only).
    """

    def __init__(self, task: BimanualTask, model: mujoco.MjModel) -> None:
        super().__init__(task, model)
        self.hands = tuple(Hand(model, f"{arm}_") for arm in ARMS)
        self._limits = tuple((np.array([REACH_X[a][0], -0.24, 0.004]), np.array([REACH_X[a][1], 0.24, 0.3]))
                             for a in ARMS)
        #: camera ids: (agent view, left wrist)
        self.cameras = (int(model.camera("agentview").id), self.hands[0].camera)
        self.steps = 0

    def _hand_layout_keys(self) -> tuple[str, ...]:
        return tuple(f"{arm}_hand" for arm in ARMS)

    # -- state -----------------------------------------------------------
    def tcp(self, arm: int) -> np.ndarray:
        """Tool centre point of arm ``arm`` (0 left, 1 right)."""
        return self.hands[arm].tcp(self.data)

    def finger_q(self, arm: int) -> np.ndarray:
        return self.hands[arm].finger_q(self.data)

    def holders(self, key: str) -> set[int]:
        """Arms holding object ``key``."""
        return {i for i, h in enumerate(self.hands) if h.attached == key}

    def to_world(self, key: str, local) -> np.ndarray:
        """A point given in the (upright) body frame of ``key``, in the world frame."""
        adr = self._qadr[key]
        out = self.pos(key) + np.array([0.0, 0.0, local[2] if len(local) > 2 else 0.0])
        out[:2] += _yaw_rot(self.data.qpos[adr + 3 : adr + 7]) @ np.asarray(local[:2])
        return out

    def proprio(self) -> np.ndarray:
        """Both arms' LIBERO-shaped proprio, ``[left 8 | right 8]``."""
        out = np.zeros(STATE_DIM, dtype=np.float32)
        for i in range(2):
            out[i * ARM_STATE_DIM : i * ARM_STATE_DIM + 3] = self.tcp(i)
            out[i * ARM_STATE_DIM + 6 : (i + 1) * ARM_STATE_DIM] = self.finger_q(i)
        return out

    # -- dynamics --------------------------------------------------------
    def step(self, action: np.ndarray) -> None:
        """One control step of both arms from a 14-D action in ``[-1, 1]`` (``[left 7 | right 7]``)."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        m, d = self.model, self.data
        closes = [hand.command(d, a[7 * i : 7 * i + 7], MAX_DELTA, *self._limits[i], SUBSTEPS)
                  for i, hand in enumerate(self.hands)]
        for k in range(1, SUBSTEPS + 1):
            for hand in self.hands:
                hand.servo(d, k / SUBSTEPS)
            self._carry()
            mujoco.mj_step(m, d)
        for hand, close in zip(self.hands, closes, strict=True):
            if close and hand.attached is None:
                hand.try_grasp(m, d, self._key_of_body, self._can_grasp, self._qadr.__getitem__)
        self.steps += 1

    def _carry(self) -> None:
        """Pin each held object to the mean grasp pose of the hands holding it."""
        held: dict[str, list[Hand]] = {}
        for hand in self.hands:
            if hand.attached is not None:
                held.setdefault(hand.attached, []).append(hand)
        d = self.data
        for key, hands in held.items():
            pos = np.mean([h.tcp(d) + h.offset for h in hands], axis=0)
            vel = np.mean([h.velocity(d) for h in hands], axis=0)
            pin_object(d, self._qadr[key], self._dadr[key], pos, hands[0].quat, vel)

    def _can_grasp(self, key: str, tcp: np.ndarray) -> bool:
        """The tool centre must be over one of the object's grasp parts (a handle, or the body)."""
        adr = self._qadr[key]
        rot = _yaw_rot(self.data.qpos[adr + 3 : adr + 7])
        local = rot.T @ (tcp[:2] - self.data.qpos[adr : adr + 2])
        for (cx, cy), (hx, hy) in grasp_parts(self.task.kind(key)):
            if abs(local[0] - cx) < hx + 0.01 and abs(local[1] - cy) < hy:
                return True
        return False

    # -- task ------------------------------------------------------------
    def hammer_head(self, key: str) -> np.ndarray:
        """World centre of a hammer's head."""
        return self.to_world(key, HAMMER_HEAD[0])

    def resting(self, key: str) -> bool:
        """Released by both hands and down on the table."""
        return not self.holders(key) and self.bottom(key) < 0.01

    def on_top(self, key: str, target: str) -> bool:
        """``key`` rests on ``target`` (centred within its footprint), released."""
        p, q = self.pos(key), self.pos(target)
        half = self.task.kind(target).collision_half
        touching = -0.01 < self.bottom(key) - self.top(target) < 0.015
        return bool(not self.holders(key) and abs(p[0] - q[0]) < half[0] and abs(p[1] - q[1]) < half[1] and touching)

    def success(self) -> bool:
        """Whether the task's goal holds in the current simulated state."""
        goal = self.task.goal
        verb, obj, target = goal.verb, goal.obj, goal.target
        if verb == "lift_both":
            return self.bottom(obj) > LIFT_HEIGHT and self.holders(obj) == {0, 1}
        if verb == "lift_pair":
            return self.bottom(obj) > LIFT_HEIGHT and self.bottom(target) > LIFT_HEIGHT
        if verb == "handover":
            return self.holders(obj) == {0} and self.bottom(obj) > 0.04
        if verb in ("place_on", "stack"):
            centred = verb == "place_on" or abs(self.pos(target)[0]) < 0.08
            return self.on_top(obj, target) and centred
        if verb == "beat":
            head, block = self.hammer_head(obj), self.pos(target)
            half = self.task.kind(target).collision_half
            over = np.all(np.abs(head[:2] - block[:2]) < np.array(half[:2]) + 0.005)
            return bool(over and head[2] - HAMMER_HEAD[1][2] < self.top(target) + 0.01)
        gap = self.task.kind(obj).footprint + self.task.kind(target).footprint
        p, q = self.pos(obj), self.pos(target)
        if verb == "beside":
            return self.resting(obj) and gap < np.hypot(*(p[:2] - q[:2])) < gap + 0.06
        if verb == "left_of":
            return self.resting(obj) and gap < q[0] - p[0] < gap + 0.08 and abs(p[1] - q[1]) < 0.06
        raise ValueError(f"unknown goal verb {verb!r} in task {self.task.spec.name!r}")
