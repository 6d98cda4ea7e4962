"""Scene geometry and end-effector motion primitives shared by the scripted LIBERO experts.

An expert's per-episode memory (``mem``, kept on the simulator) holds its
phase, the steps spent in it and the start orientation ``quat0`` (gripper
down); :func:`move` is one P-controller step of LIBERO's OSC_POSE deltas
toward a position and an orientation given as a turn of ``quat0``.
"""
from __future__ import annotations

import numpy as np

from .sim import LiberoSim, quat_to_axis_angle

#: OSC_POSE: an action of 1 asks 5 cm (position) per control step; the gain makes it a P controller
POS_GAIN = 20.0
ROT_GAIN = 2.0
OPEN, CLOSE = -1.0, 1.0
#: finger opening of the Panda gripper (m) minus a margin
GRIP_WIDTH = 0.07
#: gripper yaws tried for a grasp (about world z, from the start pose)
YAWS = (0.0, np.pi / 6, -np.pi / 6, np.pi / 3, -np.pi / 3, np.pi / 2)


def surfaces(model) -> list[int]:
    """The world body and the table/floor bodies: what a grasp is allowed to come close to."""
    return [0] + [b for b in range(model.nbody) if any(k in model.body(b).name for k in ("table", "floor"))]


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (w, x, y, z) quaternions."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def subtree(model, root: int) -> set[int]:
    """A body and all its descendants."""
    bodies = {root}
    for b in range(root + 1, model.nbody):
        if model.body_parentid[b] in bodies:
            bodies.add(b)
    return bodies


def clearance(sim: LiberoSim, points: np.ndarray, skip: set[int]) -> float:
    """Smallest distance from ``points`` to a collision geom's box outside bodies ``skip`` and the robot."""
    m, d = sim.model, sim.data
    robot = {b for b in range(m.nbody) if m.body(b).name.startswith(("robot0", "gripper0", "mount0"))}
    geoms = np.array([g for g in range(m.ngeom) if m.geom_group[g] == 0 and m.geom_bodyid[g] not in skip | robot])
    rot = d.geom_xmat[geoms].reshape(-1, 3, 3)
    best = np.inf
    for p in points:
        local = np.einsum("gji,gj->gi", rot, p - d.geom_xpos[geoms]) - m.geom_aabb[geoms, :3]
        out = np.maximum(np.abs(local) - m.geom_aabb[geoms, 3:], 0.0)
        best = min(best, float(np.linalg.norm(out, axis=1).min()))
    return best


def world_bbox(sim: LiberoSim, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world box (lo, hi) of an object's collision geoms (its whole body subtree)."""
    m, d = sim.model, sim.data
    bodies = subtree(m, sim.env.env.obj_body_id[name])
    geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies and m.geom_group[g] == 0]
    geoms = geoms or [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies]
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    pts = [d.geom_xpos[g] + (signs * m.geom_aabb[g, 3:] + m.geom_aabb[g, :3]) @ d.geom_xmat[g].reshape(3, 3).T
           for g in geoms]
    pts = np.concatenate(pts)
    return pts.min(0), pts.max(0)


def too_wide(sim: LiberoSim, obj: str) -> bool:
    """Wider than the gripper every way and flat (a plate): taken by its rim, not across."""
    if obj not in sim.env.env.obj_body_id:
        return False
    lo, hi = world_bbox(sim, obj)
    return bool(min((hi - lo)[:2]) > GRIP_WIDTH and (hi - lo)[2] < 0.03)


def place_point(sim: LiberoSim, target: str) -> tuple[np.ndarray, float]:
    """Where the carried object's body goes (xy) and the surface height it is released above."""
    e = sim.env.env
    if target in e.obj_body_id:
        lo, hi = world_bbox(sim, target)
        pos = sim.data.xpos[e.obj_body_id[target]]
        return pos[:2].copy(), float(hi[2])
    return sim.data.site(target).xpos[:2].copy(), float(sim.data.site(target).xpos[2])



def axis_quat(axis: np.ndarray, angle: float) -> np.ndarray:
    """(w, x, y, z) quaternion of a turn by ``angle`` about the unit ``axis``."""
    return np.array([np.cos(angle / 2), *(np.sin(angle / 2) * np.asarray(axis, dtype=float))])


def move(sim: LiberoSim, mem: dict, target: np.ndarray, gripper: float, yaw: float = 0.0,
         turn: np.ndarray | None = None) -> np.ndarray:
    """One action toward ``target`` with the start orientation turned by ``turn`` (a world-frame
    quaternion; by default ``yaw`` about world z)."""
    a = np.zeros(7)
    a[:3] = np.clip(POS_GAIN * (target - sim.eef_pos()), -1.0, 1.0)
    want = quat_mul(yaw_quat(yaw) if turn is None else turn, mem["quat0"])
    err = quat_mul(want, sim.eef_quat() * np.array([1, -1, -1, -1]))
    a[3:6] = np.clip(ROT_GAIN * quat_to_axis_angle(err if err[0] >= 0 else -err), -1.0, 1.0)
    a[6] = gripper
    return a


def advance(mem: dict, phase: int | None = None) -> None:
    """Next phase (or ``phase``), its step count from zero."""
    mem["phase"] = mem["phase"] + 1 if phase is None else phase
    mem["timer"] = 0


def tall_geoms_box(sim: LiberoSim, body: int) -> tuple[np.ndarray, np.ndarray]:
    """World box of a body's collision geoms that stand out above the rest (a knob's bar)."""
    m, d = sim.model, sim.data
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)])
    boxes = []
    for g in range(m.ngeom):
        if m.geom_bodyid[g] == body and m.geom_group[g] == 0:
            pts = d.geom_xpos[g] + (signs * m.geom_aabb[g, 3:] + m.geom_aabb[g, :3]) @ d.geom_xmat[g].reshape(3, 3).T
            boxes.append((pts.min(0), pts.max(0)))
    floor = min(hi[2] for _, hi in boxes)
    tall = [(lo, hi) for lo, hi in boxes if hi[2] > floor + 0.015]
    return np.min([lo for lo, _ in tall], axis=0), np.max([hi for _, hi in tall], axis=0)
