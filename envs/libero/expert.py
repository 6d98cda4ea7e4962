"""Scripted LIBERO experts: waypoints from privileged object poses, tracked by LIBERO's OSC controller.

An expert reads the BDDL goal of its task (``parsed_problem["goal_state"]``)
and the simulated poses of the objects it names, and drives the end effector
through waypoints (above the grasp, grasp, close, lift, carry, lower,
release) with LIBERO's own 7-D OSC_POSE deltas, keeping the start orientation
(gripper down). Its per-episode memory (phase, grasp offset) lives on the
simulator (``sim.expert_memory``). A chunk of ``H`` actions is planned by
running the expert closed-loop ``H`` steps ahead on the simulator itself and
restoring its state (``sim.snapshot()``/``restore``) but keeping the
memory the look-ahead ended with: MuJoCo is deterministic, so the env
replays the chunk as the expert would have acted and ends in that state.

Goals covered: ``On(obj, target)`` and ``In(obj, region)`` pick-and-place
(LIBERO-Spatial, -Object and most of -Goal), ``Open`` of a drawer and
``Turnon`` of the stove (LIBERO-Goal), ``On(plate, front region)`` by pushing.
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


def _surfaces(model) -> list[int]:
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


def place_point(sim: LiberoSim, target: str) -> tuple[np.ndarray, float]:
    """Where the carried object's body goes (xy) and the surface height it is released above."""
    e = sim.env.env
    if target in e.obj_body_id:
        lo, hi = world_bbox(sim, target)
        pos = sim.data.xpos[e.obj_body_id[target]]
        return pos[:2].copy(), float(hi[2])
    return sim.data.site(target).xpos[:2].copy(), float(sim.data.site(target).xpos[2])


class LiberoExpert:
    """Scripted expert of one LIBERO task: ``expert(sim, chunk_size) -> [H, 7]`` float32 actions.

    Args:
        task: the :class:`~vla_grpo.envs.libero.LiberoTask` it solves.
    """

    def __init__(self, task) -> None:
        self.task = task

    def __call__(self, sim: LiberoSim, chunk_size: int) -> np.ndarray:
        out = np.zeros((chunk_size, 7), dtype=np.float32)
        snap = sim.snapshot() if chunk_size > 1 else None
        for h in range(chunk_size):
            out[h] = self.act(sim)
            if chunk_size == 1:
                break
            sim.step(out[h])
            if sim.success():
                out[h + 1 :] = out[h]
                break
        if snap is not None:  # back to the decision's state; the memory is where the env's replay will leave it
            memory = sim.expert_memory
            sim.restore(snap)
            sim.expert_memory = memory
        return out

    # -- control ---------------------------------------------------------------
    def act(self, sim: LiberoSim) -> np.ndarray:
        """One closed-loop action from the current simulated state."""
        mem = sim.expert_memory
        if not mem:
            goal = self._goal(sim)
            mem.update(phase=0, timer=0, quat0=sim.eef_quat(), goal=goal,
                       push=goal[0] == "on" and self._too_wide(sim, goal[1]))
        verb = mem["goal"][0]
        if mem["push"]:
            return self._push(sim, mem)
        if verb in ("on", "in"):
            return self._pick_place(sim, mem)
        if verb == "turnon":
            return self._turn_on(sim, mem)
        raise NotImplementedError(f"no scripted expert for goal {mem['goal']} ({self.task.spec.name})")

    def _goal(self, sim: LiberoSim) -> list[str]:
        goals = sim.env.env.parsed_problem["goal_state"]
        if len(goals) != 1:
            raise NotImplementedError(f"no scripted expert for multi-part goal {goals} ({self.task.spec.name})")
        return [str(g) for g in goals[0]]

    def _move(self, sim: LiberoSim, mem: dict, target: np.ndarray, gripper: float, yaw: float = 0.0) -> np.ndarray:
        a = np.zeros(7)
        a[:3] = np.clip(POS_GAIN * (target - sim.eef_pos()), -1.0, 1.0)
        want = quat_mul(yaw_quat(yaw), mem["quat0"])
        err = quat_mul(want, sim.eef_quat() * np.array([1, -1, -1, -1]))
        a[3:6] = np.clip(ROT_GAIN * quat_to_axis_angle(err if err[0] >= 0 else -err), -1.0, 1.0)
        a[6] = gripper
        return a

    def _next(self, mem: dict, phase: int | None = None) -> None:
        mem["phase"] = mem["phase"] + 1 if phase is None else phase
        mem["timer"] = 0

    # -- pick and place ------------------------------------------------------------
    def _grasp(self, sim: LiberoSim, obj: str) -> tuple[np.ndarray, float]:
        """Grasp point of ``obj`` and gripper yaw: the candidate whose hand clears the scene most.

        A bowl is taken by its rim (the fingers straddle the wall), anything
        else across its middle where the cut is narrower than the gripper; the
        fingers close along the yawed y axis, yaws every 30 degrees.
        """
        lo, hi = world_bbox(sim, obj)
        centre = sim.data.xpos[sim.env.env.obj_body_id[obj]].copy()
        half, height = 0.5 * (hi - lo), hi[2] - lo[2]
        candidates = []  # (point, yaw, closing direction)
        for yaw in YAWS:
            u = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
            if "bowl" in obj:
                for sign in (1, -1):
                    point = centre + sign * (0.5 * (half[0] + half[1]) - 0.01) * u
                    point[2] = hi[2] - 0.02
                    candidates.append((point, yaw, u))
                continue
            cut = 2 * min(half[0] / max(abs(u[0]), 1e-6), half[1] / max(abs(u[1]), 1e-6))
            if cut < GRIP_WIDTH:
                point = 0.5 * (lo + hi)
                # tall things below their top, flat ones as low as the fingertips go (~1.5 cm)
                point[2] = max(lo[2] + 0.5 * height, hi[2] - 0.04) if height > 0.06 else lo[2] + max(0.015, 0.6 * height)
                candidates.append((point, yaw, u))
        if not candidates:
            raise NotImplementedError(f"{obj} is wider than the gripper every way ({self.task.spec.name})")
        skip = subtree(sim.model, sim.env.env.obj_body_id[obj]) | set(_surfaces(sim.model))

        def score(c):
            point, yaw, u = c
            fingers = [point + s * 0.045 * u + [0, 0, z] for s in (1, -1) for z in (0.0, 0.04)]
            hand = [point + s * 0.10 * u + [0, 0, z] for s in (1, 0.5, 0, -0.5, -1) for z in (0.03, 0.1)]
            # clearer first; among equals the smaller turn
            return round(clearance(sim, np.array(fingers + hand), skip), 3), -abs(yaw)

        point, yaw, _ = max(candidates, key=score)
        return point, yaw

    def _pick_place(self, sim: LiberoSim, mem: dict) -> np.ndarray:
        _, obj, target = mem["goal"]
        mem["timer"] += 1
        phase, t = mem["phase"], mem["timer"]
        if phase == 0:  # plan the grasp from the object's current pose
            mem["grasp"], mem["yaw"] = self._grasp(sim, obj)
            mem["obj_z0"] = float(world_bbox(sim, obj)[0][2])
            self._next(mem)
            phase = 1
        grasp, yaw = mem["grasp"], mem["yaw"]
        eef = sim.eef_pos()
        if phase == 1:  # above the grasp
            above = grasp + [0, 0, 0.10]
            if np.linalg.norm(above - eef) < 0.01 or t > 80:
                self._next(mem)
            return self._move(sim, mem, above, OPEN, yaw)
        if phase == 2:  # down to it (or until the fingers touch down)
            stalled = t > 8 and mem.get("last_z", np.inf) - eef[2] < 0.0005
            mem["last_z"] = eef[2]
            if np.linalg.norm(grasp - eef) < 0.007 or stalled or t > 50:
                self._next(mem)
            return self._move(sim, mem, grasp, OPEN, yaw)
        if phase == 3:  # close
            if t > 12:
                self._next(mem)
            return self._move(sim, mem, grasp, CLOSE, yaw)
        if phase == 4:  # lift; a miss (the object stayed down) starts over
            lifted = world_bbox(sim, obj)[0][2] - mem["obj_z0"]
            xy, surface = place_point(sim, target)
            mem["carry_z"] = max(grasp[2] + 0.15, surface + (grasp[2] - mem["obj_z0"]) + 0.08)
            if (t > 15 or eef[2] > mem["carry_z"] - 0.01) and lifted < 0.02:
                self._next(mem, 0)
                return self._move(sim, mem, eef + [0, 0, 0.05], OPEN, yaw)
            if eef[2] > mem["carry_z"] - 0.01 or t > 60:
                body = sim.data.xpos[sim.env.env.obj_body_id[obj]]
                mem["offset"] = (body - eef).copy()
                mem["bottom"] = float(world_bbox(sim, obj)[0][2] - eef[2])
                self._next(mem)
            return self._move(sim, mem, np.array([eef[0], eef[1], mem["carry_z"]]), CLOSE, yaw)
        xy, surface = place_point(sim, target)
        dest = np.array([*(xy - mem["offset"][:2]), mem["carry_z"]])
        if phase == 5:  # carry over the target
            if np.linalg.norm((dest - eef)[:2]) < 0.008 or t > 100:
                self._next(mem)
            return self._move(sim, mem, dest, CLOSE, yaw)
        if phase == 6:  # lower until the object's bottom is just above the surface
            dest[2] = surface + 0.015 - mem["bottom"]
            if eef[2] - dest[2] < 0.006 or t > 60:
                self._next(mem)
            return self._move(sim, mem, dest, CLOSE, yaw)
        if phase == 7:  # release
            if t > 10:
                self._next(mem)
            return self._move(sim, mem, eef, OPEN, yaw)
        return self._move(sim, mem, eef + [0, 0, 0.05], OPEN, yaw)  # back off and wait

    # -- pushing -----------------------------------------------------------------------
    @staticmethod
    def _too_wide(sim: LiberoSim, obj: str) -> bool:
        """Wider than the gripper every way and too flat for a rim grasp (a plate): pushed, not carried."""
        if obj not in sim.env.env.obj_body_id:
            return False
        lo, hi = world_bbox(sim, obj)
        return bool(min((hi - lo)[:2]) > GRIP_WIDTH and (hi - lo)[2] < 0.03)

    def _push(self, sim: LiberoSim, mem: dict) -> np.ndarray:
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
            skip = subtree(sim.model, sim.env.env.obj_body_id[obj]) | set(_surfaces(sim.model))

            def hand(yaw):
                c = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
                pts = [behind + k * c + [0, 0, z] for k in (0.1, 0.05, -0.05, -0.1) for z in (0.03, 0.08)]
                return round(clearance(sim, np.array(pts), skip), 3), -abs(yaw)

            mem["yaw"] = max(YAWS + (-np.pi / 2,), key=hand)
        yaw = mem["yaw"]
        if mem["phase"] == 0:  # above the point behind the object
            above = behind + [0, 0, 0.1]
            if np.linalg.norm(above - eef) < 0.01 or mem["timer"] > 60:
                self._next(mem)
            return self._move(sim, mem, above, CLOSE, yaw)
        if mem["phase"] == 1:  # down behind it
            if np.linalg.norm(behind - eef) < 0.01 or mem["timer"] > 40:
                self._next(mem)
            return self._move(sim, mem, behind, CLOSE, yaw)
        # push: keep behind the object on the line to the goal, 3 cm ahead
        return self._move(sim, mem, behind + u * min(0.03, np.linalg.norm(to_goal) + 0.005), CLOSE, yaw)

    # -- knobs -------------------------------------------------------------------------
    def _turn_on(self, sim: LiberoSim, mem: dict) -> np.ndarray:
        """Turn a stove's knob counter-clockwise by pushing the end of its bar round the axis."""
        m, d = sim.model, sim.data
        mem["timer"] += 1
        if mem["phase"] == 0:
            name = mem["goal"][1]
            joint = next(j for j in range(m.njnt) if m.joint(j).name.startswith(name) and m.jnt_type[j] == 3)
            axis = d.xanchor[joint].copy()
            bar_lo, bar_hi = _tall_geoms_box(sim, int(m.jnt_bodyid[joint]))
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
                self._next(mem)
            return self._move(sim, mem, above, CLOSE)
        if mem["phase"] == 2:  # down beside the bar
            if np.linalg.norm(start - eef) < 0.008 or mem["timer"] > 40:
                self._next(mem)
            return self._move(sim, mem, start, CLOSE)
        # push round the axis, ahead of the hand and of the start point turned with the knob
        hand = float(np.arctan2(*(eef - axis)[1::-1]))
        now = max(hand + np.round((angle - hand) / (2 * np.pi)) * 2 * np.pi, angle + float(d.qpos[mem["qpos"]])) + 0.8
        ahead = axis + radius * np.array([np.cos(now), np.sin(now), 0.0])
        ahead[2] = z
        return self._move(sim, mem, ahead, CLOSE)


def _tall_geoms_box(sim: LiberoSim, body: int) -> tuple[np.ndarray, np.ndarray]:
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
