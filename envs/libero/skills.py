"""Scripted LIBERO skills besides pick-and-place: clearing a drawer's way and opening it, turning a knob.

Each skill is ``skill(sim, mem) -> action`` (7-D OSC_POSE), one closed-loop
step from the simulated state and the expert's per-episode memory ``mem``
(see :mod:`.motion`).
"""
from __future__ import annotations

import mujoco
import numpy as np

from .motion import (
    CLOSE,
    OPEN,
    advance,
    axis_quat,
    clearance,
    move,
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
#: how far past the way an opening drawer sweeps an object in it is dragged (m)
CLEAR_MARGIN = 0.015
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


def _swept_box(sim: LiberoSim, region: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World box a drawer's body sweeps from where it is to opened (:data:`OPEN_MARGIN` past the
    threshold), and the way it opens."""
    joint, threshold, sign = drawer_joint(sim, region)
    m, d = sim.model, sim.data
    body = int(m.jnt_bodyid[joint])
    _, pull = _handle(sim, joint, sign)
    travel = max(sign * (threshold - float(d.qpos[m.jnt_qposadr[joint]])) + OPEN_MARGIN, 0.0)
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)])
    pts = np.concatenate([d.geom_xpos[g] + (signs * m.geom_aabb[g, 3:] + m.geom_aabb[g, :3]) @ d.geom_xmat[g].reshape(3, 3).T
                          for g in range(m.ngeom) if m.geom_bodyid[g] == body and m.geom_group[g] == 0])
    pts = np.concatenate([pts, pts + travel * pull])
    return pts.min(0), pts.max(0), pull


def _path_obstacle(sim: LiberoSim, region: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """A bowl under the way the drawer holding ``region`` slides out, the shortest sideways shift (world xy)
    that takes its box out of that way (the hand could not reach it under the opened drawer) and that way."""
    lo, hi, pull = _swept_box(sim, region)
    side = np.array([-pull[1], pull[0]])
    for name in sim.env.env.objects_dict:
        olo, ohi = world_bbox(sim, name)
        if "bowl" not in name or ohi[2] > lo[2] or np.any(olo[:2] > hi[:2]) or np.any(ohi[:2] < lo[:2]):
            continue
        corners = np.array([[x, y] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])])
        ocorners = np.array([[x, y] for x in (olo[0], ohi[0]) for y in (olo[1], ohi[1])])
        # +side: the object's lowest side coordinate past the box's highest; -side the other way round
        shifts = [(corners @ side).max() - (ocorners @ side).min(), (ocorners @ side).max() - (corners @ side).min()]
        k = int(np.argmin(shifts))
        return name, (1 if k == 0 else -1) * (shifts[k] + CLEAR_MARGIN) * side, pull[:2]
    return None


def _plan_drag(sim: LiberoSim, name: str, shift: np.ndarray, along: np.ndarray) -> tuple[np.ndarray, float]:
    """Where the bowl is dragged (the sideways ``shift`` plus a step ``along`` the drawer's way or against
    it) and the hand's yaw: the pair with the bowl and the hand at the end clearest of the scene."""
    lo, hi = world_bbox(sim, name)
    centre, radius = 0.5 * (lo + hi), 0.5 * min((hi - lo)[:2])
    skip = subtree(sim.model, sim.env.env.obj_body_id[name]) | set(surfaces(sim.model))
    ring = [radius * np.array([np.cos(a), np.sin(a), 0.0]) + [0, 0, 0.5 * (hi - lo)[2]] for a in np.linspace(0, 2 * np.pi, 12)]
    direction = np.append(shift / np.linalg.norm(shift), 0.0)
    best = None
    for step in (0.0, 0.03, -0.03, 0.06, -0.06):
        dest = centre + np.append(shift + step * along, 0.0)
        bowl = clearance(sim, dest - [0, 0, 0.5 * (hi - lo)[2]] + np.array(ring), skip)
        hand_at = np.append(dest[:2], lo[2] + 0.025) + (radius - 0.015) * direction
        for yaw in (0.0, np.pi / 2, np.pi / 6, -np.pi / 6, np.pi / 3, -np.pi / 3):
            c = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
            pts = [hand_at + k * c + [0, 0, z] for k in (0.1, 0.05, 0, -0.05, -0.1) for z in (0.03, 0.08)]
            key = (round(min(bowl, clearance(sim, np.array(pts), skip)), 3), -abs(step), -abs(yaw))
            if best is None or key > best[0]:
                best = key, dest, yaw
    return best[1], best[2]


def clear_drawer_path(sim: LiberoSim, mem: dict, region: str) -> np.ndarray | None:
    """Drag a bowl standing where the drawer holding ``region`` will slide out to beside it, the
    closed fingers inside the bowl pushing its wall; ``None`` once nothing is in the way."""
    cm = mem.setdefault("clear", {"phase": 0, "timer": 0})
    if cm.get("done"):
        return None
    cm["timer"] += 1
    eef = sim.eef_pos()
    if cm["phase"] == 0:  # plan: what is in the way and where to
        found = _path_obstacle(sim, region)
        if found is None:
            cm["done"] = True
            return None
        name, shift, along = found
        lo, hi = world_bbox(sim, name)
        centre = 0.5 * (lo + hi)
        dest, yaw = _plan_drag(sim, name, shift, along)
        cm.update(name=name, inside=np.array([centre[0], centre[1], lo[2] + 0.025]), top=float(hi[2]),
                  shift=np.append((dest - centre)[:2], 0.0), yaw=yaw)
        advance(cm)
    inside, top, yaw = cm["inside"], cm["top"], cm["yaw"]
    if cm["phase"] == 1:  # above the bowl's middle
        above = np.array([inside[0], inside[1], top + 0.04])
        if np.linalg.norm(above - eef) < 0.02 or cm["timer"] > 60:
            advance(cm)
        return move(sim, mem, above, CLOSE, yaw)
    if cm["phase"] == 2:  # down into it (until the fingers touch its floor)
        stalled = cm["timer"] > 8 and cm.get("last_z", np.inf) - eef[2] < 0.0005
        cm["last_z"] = eef[2]
        if np.linalg.norm(inside - eef) < 0.008 or stalled or cm["timer"] > 40:
            advance(cm)
        return move(sim, mem, inside, CLOSE, yaw)
    if cm["phase"] == 3:  # drag: the hand crosses the bowl's inside (~its radius) then the shift
        wall = 0.5 * min(np.subtract(*world_bbox(sim, cm["name"])[::-1])[:2]) - 0.015
        shift = cm["shift"]
        dest = inside + shift + wall * shift / np.linalg.norm(shift)
        if np.linalg.norm((dest - eef)[:2]) < 0.01 or cm["timer"] > 40:
            advance(cm)
        return move(sim, mem, np.array([dest[0], dest[1], inside[2]]), CLOSE, yaw)
    if cm["phase"] == 4:  # up out of it
        if eef[2] > top + 0.03 or cm["timer"] > 20:
            advance(cm, 0)
        return move(sim, mem, np.array([eef[0], eef[1], top + 0.06]), CLOSE, yaw)
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


def close_drawer(sim: LiberoSim, mem: dict, region: str) -> np.ndarray | None:
    """Push the open drawer holding ``region`` shut by its handle, the closed gripper pointing down;
    ``None`` once LIBERO's ``Close`` holds and the hand has backed off.

    Opened, the handle stands clear in front of the cabinet, so the hand comes
    down in front of it and pushes along the slide; a push that stalls short of
    closed backs off and starts over.
    """
    cm = mem.setdefault("cstate", {"phase": 0, "timer": 0})
    joint, _, sign = drawer_joint(sim, region)
    handle, pull = _handle(sim, joint, sign)  # it moves with the drawer
    closed = bool(sim.env.env._eval_predicate(["close", region]))
    cm["timer"] += 1
    eef, phase, t = sim.eef_pos(), cm["phase"], cm["timer"]
    push = handle + 0.045 * pull
    # the hand's long side (its fingers' closing axis) across the slide: along it, the palm would
    # meet the cabinet ~10 cm before the fingers have pushed the drawer home
    yaw = cm.setdefault("yaw", float((np.arctan2(pull[1], pull[0]) + np.pi / 2) % np.pi - np.pi / 2))
    if phase == 0:  # above the point in front of the handle
        above = push + [0, 0, 0.12]
        above[2] = max(above[2], eef[2])
        if np.linalg.norm((above - eef)[:2]) < 0.01 or t > 80:
            advance(cm)
        return move(sim, mem, above, CLOSE, yaw)
    if phase == 1:  # down to the handle's height
        stalled = t > 8 and cm.get("last_z", np.inf) - eef[2] < 0.0005
        cm["last_z"] = eef[2]
        if np.linalg.norm(push - eef) < 0.008 or stalled or t > 50:
            advance(cm)
        return move(sim, mem, push, CLOSE, yaw)
    if phase == 2:  # push along the slide, 3 cm ahead of the hand
        if closed or t > 100:
            advance(cm)
        return move(sim, mem, np.array([*(eef - 0.03 * pull)[:2], push[2]]), CLOSE, yaw)
    if phase == 3:  # back off out and up
        if t > 15:
            advance(cm, None if closed else 0)
        return move(sim, mem, eef + 0.03 * pull + [0, 0, 0.03], CLOSE, yaw)
    return None
