"""Scripted LIBERO skills besides pick-and-place: opening a drawer, turning a knob, pushing a flat object.

Each skill is ``skill(sim, mem) -> action`` (7-D OSC_POSE), one closed-loop
step from the simulated state and the expert's per-episode memory ``mem``
(see :mod:`.motion`).
"""
from __future__ import annotations

import mujoco
import numpy as np

from .motion import (
    CLOSE,
    GRIP_WIDTH,
    OPEN,
    YAWS,
    advance,
    axis_quat,
    clearance,
    move,
    place_point,
    quat_mul,
    subtree,
    surfaces,
    tall_geoms_box,
    world_bbox,
)
from .sim import LiberoSim

#: how far past LIBERO's ``Open`` threshold a drawer is pulled (m of its slide joint)
OPEN_MARGIN = 0.01
#: how far a drawer slides out at most (m; LIBERO's cabinets: 0.16)
DRAWER_TRAVEL = 0.16
#: look-ahead steps allowed for one try at a drawer (it opens in ~100)
PLAN_STEPS = 200
#: rolls of the pitched hand about its pointing axis tried for a drawer handle: the fingers still
#: straddle a horizontal bar up to ~70 degrees
ROLLS = (0.0, np.pi / 6, -np.pi / 6, np.pi / 4, -np.pi / 4, np.pi / 3, -np.pi / 3)


# -- drawers -------------------------------------------------------------------------
def drawer_joint(sim: LiberoSim, region: str) -> tuple[int, float, float] | None:
    """The slide joint of the drawer a BDDL region sits in, LIBERO's ``Open`` threshold of its qpos and
    the sign of opening (from its fixture's ``default_open_ranges``/``default_close_ranges``);
    ``None`` when the region is not in a drawer."""
    e = sim.env.env
    site = e.object_sites_dict.get(region)
    joints = getattr(site, "joints", None)
    if not joints:
        return None
    art = e.get_object(site.parent_name).object_properties["articulation"]
    sign = float(np.sign(np.mean(art["default_open_ranges"]) - np.mean(art["default_close_ranges"])))
    threshold = min(art["default_open_ranges"]) if sign > 0 else max(art["default_open_ranges"])
    return int(sim.model.joint(joints[0]).id), float(threshold), sign


def drawer_is_open(sim: LiberoSim, region: str) -> bool:
    joint, threshold, sign = drawer_joint(sim, region)
    return sign * (float(sim.data.qpos[sim.model.jnt_qposadr[joint]]) - threshold) > 0


def _handle(sim: LiberoSim, joint: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre of a drawer's handle (the geom standing out most the way it opens) and that way (world unit)."""
    m, d = sim.model, sim.data
    body = int(m.jnt_bodyid[joint])
    pull = sign * d.xmat[body].reshape(3, 3) @ m.jnt_axis[joint]
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)])
    best, centre = -np.inf, None
    for g in range(m.ngeom):
        if m.geom_bodyid[g] == body and m.geom_group[g] == 0:
            pts = d.geom_xpos[g] + (signs * m.geom_aabb[g, 3:] + m.geom_aabb[g, :3]) @ d.geom_xmat[g].reshape(3, 3).T
            reach = float((pts @ pull).max())
            if reach > best:
                best, centre = reach, pts.mean(0)
    return centre, pull


def drawer_front_offset(sim: LiberoSim, region: str) -> np.ndarray:
    """xy offset from a drawer region's centre to the middle of its front half: the part of the drawer
    that opening it brings out of the cabinet (LIBERO's ``In`` tests the object's centre in the region's box)."""
    joint, _, sign = drawer_joint(sim, region)
    _, pull = _handle(sim, joint, sign)
    half = np.abs(sim.data.site(region).xmat.reshape(3, 3) @ sim.env.env.object_sites_dict[region].size)
    return 0.5 * float(half @ np.abs(pull)) * pull[:2]


def _rotate(quat: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.zeros(3)
    mujoco.mju_rotVecQuat(out, np.asarray(v, dtype=float), quat)
    return out


def _pinch_turns(sim: LiberoSim, grasp: np.ndarray, pull: np.ndarray, skip: set[int]) -> list[np.ndarray]:
    """Turns of the start pose (down, closing along world y) that point the fingers against ``pull``, rolled
    about that axis by each of ``ROLLS``, the hand clearing the scene most at the handle and pulled out first
    (held upright it would reach the table and whatever stands in front of the drawer)."""
    down = np.array([0.0, 0.0, -1.0])
    axis = np.cross(down, -pull)
    pitch = axis_quat(axis / np.linalg.norm(axis), float(np.arccos(np.clip(down @ -pull, -1.0, 1.0))))

    def score(roll):
        turn = quat_mul(axis_quat(-pull, roll), pitch)
        closing, pointing = _rotate(turn, [0.0, 1.0, 0.0]), -pull
        side = np.cross(closing, pointing)
        pts = [at + s * 0.10 * closing - h * pointing + w * 0.035 * side
               for at in (grasp, grasp + DRAWER_TRAVEL * pull) for s in (1, 0.5, 0, -0.5, -1)
               for h in (0.03, 0.1) for w in (1, -1)]
        return round(clearance(sim, np.array(pts), skip), 3), -abs(roll)

    return [quat_mul(axis_quat(-pull, roll), pitch) for roll in sorted(ROLLS, key=score, reverse=True)]


def _plan_turn(sim: LiberoSim, mem: dict, region: str) -> np.ndarray:
    """The first of :func:`_pinch_turns` with which a look-ahead on the simulator opens the drawer.

    Which roll the arm can hold at the handle depends on its joint limits
    (rolled one way the shoulder reaches its limit short of the handle), which
    the scene's geometry does not tell: each is tried, then the state restored.
    """
    joint, _, sign = drawer_joint(sim, region)
    grasp, pull = _handle(sim, joint, sign)
    turns = _pinch_turns(sim, grasp, pull, {int(sim.model.jnt_bodyid[joint])})
    snap = sim.snapshot()
    try:
        for turn in turns:
            mem["dstate"] = {"phase": 0, "timer": 0, "turn": turn}
            for _ in range(PLAN_STEPS):
                if mem["dstate"]["phase"] >= 4:  # pulled open
                    return turn
                sim.step(open_drawer(sim, mem, region))
            sim.restore(snap)
            sim.expert_memory = mem
    finally:
        sim.restore(snap)
        sim.expert_memory = mem
    return turns[0]  # none opened it: the clearest


def open_drawer(sim: LiberoSim, mem: dict, region: str) -> np.ndarray | None:
    """Pinch the handle of the drawer holding ``region`` and pull it open; ``None`` once it is open.

    The handle stands ~2.5 cm out of the drawer face with the drawer above
    close over it, so no hand pointing down reaches behind it: the gripper is
    pitched 90 degrees to point into the drawer, its fingers closing across the
    bar, and pulls along the slide; a pull that stalls lets go and starts over.
    """
    if "dstate" not in mem:
        mem["dstate"] = {"phase": 0, "timer": 0, "turn": _plan_turn(sim, mem, region)}
    dm = mem["dstate"]
    joint, threshold, sign = drawer_joint(sim, region)
    opened = sign * (float(sim.data.qpos[sim.model.jnt_qposadr[joint]]) - threshold) > OPEN_MARGIN
    dm["timer"] += 1
    grasp, pull = _handle(sim, joint, sign)  # it moves with the drawer
    turn, eef = dm["turn"], sim.eef_pos()
    phase, t = dm["phase"], dm["timer"]
    if phase == 0:  # turn and go in front of the handle
        front = grasp + 0.10 * pull
        if np.linalg.norm(front - eef) < 0.01 and t > 10 or t > 100:
            advance(dm)
        return move(sim, mem, front, OPEN, turn=turn)
    if phase == 1:  # in to it
        if np.linalg.norm(grasp - eef) < 0.006 or t > 50:
            advance(dm)
        return move(sim, mem, grasp, OPEN, turn=turn)
    if phase == 2:  # close on the bar
        if t > 12:
            advance(dm)
        return move(sim, mem, grasp, CLOSE, turn=turn)
    if phase == 3:  # pull along the slide, 3 cm ahead of the hand
        if opened or t > 80:
            advance(dm)
        return move(sim, mem, eef + 0.03 * pull, CLOSE, turn=turn)
    if phase == 4:  # let go and back off
        if t > 10:
            advance(dm)
        return move(sim, mem, eef + 0.02 * pull * (t > 4), OPEN, turn=turn)
    if phase == 5:  # out and up over the fixture (the open drawer stands in the way back)
        top = world_bbox(sim, sim.env.env.object_sites_dict[region].parent_name)[1][2]
        back = dm.setdefault("back", np.append((eef + 0.06 * pull)[:2], max(eef[2], top) + 0.05))
        if np.linalg.norm(back - eef) < 0.02 or t > 30:
            advance(dm)
        return move(sim, mem, back, OPEN, turn=turn)
    if phase == 6:  # back to the start pose (turned back beside the drawer the arm meets its joint limits)
        action = move(sim, mem, mem["pos0"], OPEN)
        if np.linalg.norm(mem["pos0"] - eef) < 0.02 and np.abs(action[3:6]).max() < 0.05 or t > 60:
            advance(dm, None if opened else 0)
            dm.pop("back")
        return action
    return None


# -- knobs -------------------------------------------------------------------------
def turn_knob(sim: LiberoSim, mem: dict) -> np.ndarray:
    """Turn a stove's knob counter-clockwise by pushing the end of its bar round the axis."""
    m, d = sim.model, sim.data
    mem["timer"] += 1
    if mem["phase"] == 0:
        name = mem["goal"][1]
        joint = next(j for j in range(m.njnt) if m.joint(j).name.startswith(name) and m.jnt_type[j] == 3)
        axis = d.xanchor[joint].copy()
        bar_lo, bar_hi = tall_geoms_box(sim, int(m.jnt_bodyid[joint]))
        long = int(np.argmax((bar_hi - bar_lo)[:2]))
        # the bar's end nearer the robot (the hand reaches it without crossing the stove)
        base = d.xpos[m.body("robot0_base").id]
        ends = [0.5 * (bar_lo + bar_hi) for _ in range(2)]
        ends[0][long], ends[1][long] = bar_hi[long] - 0.015, bar_lo[long] + 0.015
        end = min(ends, key=lambda e: np.linalg.norm((e - base)[:2]))
        radius = float(np.hypot(*(end - axis)[:2]))
        tangent = np.array([-(end - axis)[1], (end - axis)[0], 0.0]) / radius
        half_width = 0.5 * (bar_hi - bar_lo)[1 - long]
        start = end - tangent * (half_width + 0.04)  # closed fingers reach ~3 cm either side
        mem.update(phase=1, timer=0, axis=axis, qpos=int(m.jnt_qposadr[joint]), radius=float(np.hypot(*(start - axis)[:2])),
                   angle=float(np.arctan2(*(start - axis)[1::-1])), z=float(bar_hi[2] - 0.015))
    axis, radius, angle, z = mem["axis"], mem["radius"], mem["angle"], mem["z"]
    start = axis + radius * np.array([np.cos(angle), np.sin(angle), 0.0])
    start[2] = z
    eef = sim.eef_pos()
    if mem["phase"] == 1:  # above the push point, fingers closed
        above = start + [0, 0, 0.08]
        if np.linalg.norm(above - eef) < 0.01 or mem["timer"] > 60:
            advance(mem)
        return move(sim, mem, above, CLOSE)
    if mem["phase"] == 2:  # down beside the bar
        if np.linalg.norm(start - eef) < 0.008 or mem["timer"] > 40:
            advance(mem)
        return move(sim, mem, start, CLOSE)
    # push round the axis, ahead of the hand and of the start point turned with the knob
    hand = float(np.arctan2(*(eef - axis)[1::-1]))
    now = max(hand + np.round((angle - hand) / (2 * np.pi)) * 2 * np.pi, angle + float(d.qpos[mem["qpos"]])) + 0.8
    ahead = axis + radius * np.array([np.cos(now), np.sin(now), 0.0])
    ahead[2] = z
    return move(sim, mem, ahead, CLOSE)




# -- pushing -----------------------------------------------------------------------
def too_wide(sim: LiberoSim, obj: str) -> bool:
    """Wider than the gripper every way and too flat for a rim grasp (a plate): pushed, not carried."""
    if obj not in sim.env.env.obj_body_id:
        return False
    lo, hi = world_bbox(sim, obj)
    return bool(min((hi - lo)[:2]) > GRIP_WIDTH and (hi - lo)[2] < 0.03)

def push_flat(sim: LiberoSim, mem: dict) -> np.ndarray:
    """Push ``obj`` (a plate) over the target along the table, the closed fingers inside its rim."""
    _, obj, target = mem["goal"]
    mem["timer"] += 1
    lo, hi = world_bbox(sim, obj)
    centre = sim.data.xpos[sim.env.env.obj_body_id[obj]]
    goal, _ = place_point(sim, target)
    to_goal = np.append(goal - centre[:2], 0.0)
    u = to_goal / max(np.linalg.norm(to_goal), 1e-6)
    radius = 0.5 * max((hi - lo)[:2])
    # fingertips inside the dish against its far rim (reaching behind it would hit what is behind)
    z = lo[2] + 0.015
    behind = centre - u * (radius - 0.02)
    behind[2] = z
    eef = sim.eef_pos()
    if "yaw" not in mem:  # the hand (long along the closing axis) turned where it clears the scene
        skip = subtree(sim.model, sim.env.env.obj_body_id[obj]) | set(surfaces(sim.model))

        def hand(yaw):
            c = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
            pts = [behind + k * c + [0, 0, z] for k in (0.1, 0.05, -0.05, -0.1) for z in (0.03, 0.08)]
            return round(clearance(sim, np.array(pts), skip), 3), -abs(yaw)

        mem["yaw"] = max(YAWS + (-np.pi / 2,), key=hand)
    yaw = mem["yaw"]
    if mem["phase"] == 0:  # above the point behind the object
        above = behind + [0, 0, 0.1]
        if np.linalg.norm(above - eef) < 0.01 or mem["timer"] > 60:
            advance(mem)
        return move(sim, mem, above, CLOSE, yaw)
    if mem["phase"] == 1:  # down behind it
        if np.linalg.norm(behind - eef) < 0.01 or mem["timer"] > 40:
            advance(mem)
        return move(sim, mem, behind, CLOSE, yaw)
    # push: keep behind the object on the line to the goal, 3 cm ahead
    return move(sim, mem, behind + u * min(0.03, np.linalg.norm(to_goal) + 0.005), CLOSE, yaw)

