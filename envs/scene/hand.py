"""One servoed top-down hand with two fingers (:func:`.mjcf.hand_xml`): its addresses and its grasp.

A :class:`Hand` knows the addresses of one hand in a compiled model (joints,
actuators, finger bodies, wrist camera) and the grasp it holds; the
simulator owning the ``MjData`` passes it in. A scene may hold several hands
(the bimanual suite has a ``left_`` and a ``right_`` one).

**Grasp (documented simplification).** When the gripper is commanded closed
and *both* fingers touch the same graspable object (read from MuJoCo's
contact list), and the simulator's ``can_grasp`` check agrees (the hand is
over the part to hold), the object is attached: every physics substep its
free joint follows the hand at the offset it had when grasped
(:func:`pin_object`). Opening the gripper releases it.
"""
from __future__ import annotations

from collections.abc import Callable

import mujoco
import numpy as np

from .mjcf import FINGER_CLOSED, TIMESTEP


def pin_object(data: mujoco.MjData, qadr: int, dadr: int, pos: np.ndarray, quat: np.ndarray,
               vel: np.ndarray) -> None:
    """Set a free joint's pose and (linear) velocity, zero its angular velocity."""
    data.qpos[qadr : qadr + 3] = pos
    data.qpos[qadr + 3 : qadr + 7] = quat
    data.qvel[dadr : dadr + 3] = vel
    data.qvel[dadr + 3 : dadr + 6] = 0.0


class Hand:
    """Addresses and grasp state of one hand named with ``prefix`` in ``model``.

    Args:
        model: the compiled scene.
        prefix: the hand's name prefix (``""`` for the tabletop's single hand).
    """

    def __init__(self, model: mujoco.MjModel, prefix: str = "") -> None:
        self.prefix = prefix
        self.q = int(model.joint(f"{prefix}hand_x").qposadr[0])  # x, y, z slides are consecutive
        self.v = int(model.joint(f"{prefix}hand_x").dofadr[0])
        self.ctrl_pos = int(model.actuator(f"{prefix}hand_x").id)  # then y, z, vx, vy, vz, fingers
        self.camera = int(model.camera(f"{prefix}wrist").id)
        self.fingers = (int(model.body(f"{prefix}finger_l").id), int(model.body(f"{prefix}finger_r").id))
        self.finger_adr = [int(model.joint(f"{prefix}finger_l").qposadr[0]),
                           int(model.joint(f"{prefix}finger_r").qposadr[0])]
        self.attached: str | None = None
        self.offset = np.zeros(3)
        self.quat = np.array([1.0, 0.0, 0.0, 0.0])
        self._start = np.zeros(3)
        self._target = np.zeros(3)

    def copy(self) -> Hand:
        """An independent copy of the grasp state (addresses are shared)."""
        other = object.__new__(Hand)
        other.__dict__.update(self.__dict__)
        for name in ("offset", "quat", "_start", "_target"):
            setattr(other, name, getattr(self, name).copy())
        return other

    def tcp(self, data: mujoco.MjData) -> np.ndarray:
        """Tool centre point: between the finger tips (world frame)."""
        return data.qpos[self.q : self.q + 3].copy()

    def velocity(self, data: mujoco.MjData) -> np.ndarray:
        return data.qvel[self.v : self.v + 3]

    def finger_q(self, data: mujoco.MjData) -> np.ndarray:
        """Closing of each finger, 0 (open) to ``FINGER_CLOSED``."""
        return data.qpos[self.finger_adr].copy()

    def place(self, data: mujoco.MjData, pos) -> None:
        """Put the hand at ``pos`` and hold it there (used at reset)."""
        data.qpos[self.q : self.q + 3] = pos
        data.ctrl[self.ctrl_pos : self.ctrl_pos + 3] = pos
        self.attached = None

    def command(self, data: mujoco.MjData, action: np.ndarray, max_delta: float, lo: np.ndarray,
                hi: np.ndarray, substeps: int) -> bool:
        """Start one control step from a clipped 7-D action; returns whether the gripper closes.

        The target is ``tcp + action[:3] * max_delta`` clipped to ``[lo, hi]``;
        :meth:`servo` then interpolates to it over ``substeps`` physics steps.
        An open command releases what the hand holds.
        """
        close = action[6] > 0.0
        if not close:
            self.attached = None
        self._start = self.tcp(data)
        self._target = np.clip(self._start + action[:3] * max_delta, lo, hi)
        c = self.ctrl_pos
        data.ctrl[c + 3 : c + 6] = (self._target - self._start) / (substeps * TIMESTEP)  # velocity feed-forward
        data.ctrl[c + 6 : c + 8] = FINGER_CLOSED if close else 0.0
        return close

    def servo(self, data: mujoco.MjData, fraction: float) -> None:
        """Position target of the substep ``fraction`` (0..1] of the way through the control step."""
        data.ctrl[self.ctrl_pos : self.ctrl_pos + 3] = self._start + (self._target - self._start) * fraction

    def try_grasp(self, model: mujoco.MjModel, data: mujoco.MjData, graspable: dict[int, str],
                  can_grasp: Callable[[str, np.ndarray], bool], object_qpos: Callable[[str], int]) -> None:
        """Attach the graspable object both fingers touch and ``can_grasp(key, tcp)`` accepts, if any."""
        if data.ncon == 0 or data.qpos[self.finger_adr].min() > FINGER_CLOSED - 0.002:
            return  # fingers that closed all the way hold nothing: skip the contact scan
        bodies = model.geom_bodyid[data.contact.geom]  # [ncon, 2]
        touching = []
        for finger in self.fingers:
            hit = bodies[(bodies == finger).any(axis=1)]
            touching.append(set(hit[hit != finger].tolist()))
        tcp = self.tcp(data)
        for body in touching[0] & touching[1]:
            key = graspable.get(body)
            if key is None or not can_grasp(key, tcp):
                continue
            adr = object_qpos(key)
            self.attached = key
            self.offset = data.qpos[adr : adr + 3] - tcp
            self.quat = data.qpos[adr + 3 : adr + 7].copy()
            return
