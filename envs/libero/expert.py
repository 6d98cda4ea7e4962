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
(LIBERO-Spatial, -Object and -Goal; a plate, too wide to take across, is
carried by its rim like a bowl's; so are a mug, whose handle makes it wider
than the gripper every way, and a frying pan), with the drawer holding the
region opened first when it is closed, after dragging a bowl out of the way
it slides out (the hand could not reach the bowl under it); ``Open`` and
``Close`` of a drawer and ``Turnon`` of the stove (:mod:`.skills`); and a
conjunction of these (LIBERO-90's "put the butter in the top drawer and close
it"), its parts reached in the BDDL's order, each once the previous one
holds and its skill has let go.
"""
from __future__ import annotations

import numpy as np

from .motion import (
    CLOSE,
    GRIP_WIDTH,
    OPEN,
    YAWS,
    advance,
    clearance,
    move,
    place_point,
    subtree,
    surfaces,
    too_wide,
    world_bbox,
)
from .sim import LiberoSim
from .skills import (
    clear_drawer_path,
    close_drawer,
    drawer_front_offset,
    drawer_is_open,
    drawer_joint,
    open_drawer,
    turn_knob,
)
from .tasks import LiberoTask


class LiberoExpert:
    """Scripted expert of one LIBERO task: ``expert(sim, chunk_size) -> [H, 7]`` float32 actions.

    Args:
        task: the :class:`~.tasks.LiberoTask` it solves.
    """

    def __init__(self, task: LiberoTask) -> None:
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
            parts = self._goal(sim)
            mem.update(quat0=sim.eef_quat(), pos0=sim.eef_pos(), parts=parts, part=0)
            self._start_part(sim, mem)
        elif mem["part"] + 1 < len(mem["parts"]) and self._part_done(sim, mem):
            mem["part"] += 1
            self._start_part(sim, mem)
        verb = mem["goal"][0]
        if mem["drawer"]:  # first open the drawer the goal names or puts something in
            # what stands where it slides out is dragged aside first when the hand must reach it after:
            # to put something in, or for a later part (a lone Open leaves it: clearing cost 2 of 10 states)
            later = mem["part"] + 1 < len(mem["parts"])
            action = clear_drawer_path(sim, mem, mem["drawer"]) if verb == "in" or (verb == "open" and later) else None
            action = open_drawer(sim, mem, mem["drawer"]) if action is None else action
            if action is not None:
                return action
            mem.update(drawer=None, high=True)
        if verb in ("on", "in"):
            return self._pick_place(sim, mem)
        if verb == "turnon":
            return turn_knob(sim, mem)
        if verb == "close":
            action = close_drawer(sim, mem, mem["goal"][1])
            if action is not None:
                return action
        if verb in ("open", "close"):  # done: hold still
            return move(sim, mem, sim.eef_pos(), OPEN if verb == "open" else CLOSE)
        raise NotImplementedError(f"no scripted expert for goal {mem['goal']} ({self.task.spec.name})")

    def _start_part(self, sim: LiberoSim, mem: dict) -> None:
        """Fresh skill memory for the goal's next part (a conjunction's parts are reached in BDDL order)."""
        keep = {k: mem[k] for k in ("quat0", "pos0", "parts", "part")}
        mem.clear()
        goal = keep["parts"][keep["part"]]
        if goal[0] == "close" and drawer_joint(sim, goal[1]) is None:
            raise NotImplementedError(f"no scripted expert for goal {goal} ({self.task.spec.name})")
        mem.update(keep, phase=0, timer=0, goal=goal, drawer=self._closed_drawer(sim, goal), high=keep["part"] > 0)

    @staticmethod
    def _part_done(sim: LiberoSim, mem: dict) -> bool:
        """The current part's predicate holds and its skill has let go (released, backed off)."""
        goal = mem["goal"]
        if not sim.env.env._eval_predicate(goal):
            return False
        if goal[0] in ("on", "in"):
            return mem["phase"] >= 8 and mem["timer"] >= 8
        if goal[0] == "close":
            return mem.get("cstate", {}).get("phase", 0) >= 4
        return not mem["drawer"]  # open: opened and back at the start pose; turnon: turned

    @staticmethod
    def _closed_drawer(sim: LiberoSim, goal: list[str]) -> str | None:
        """The region whose drawer must be opened first: ``Open(region)``, or ``In(obj, region)`` of a closed one."""
        region = goal[1] if goal[0] == "open" else goal[2] if goal[0] == "in" else None
        if region is None or drawer_joint(sim, region) is None or drawer_is_open(sim, region):
            return None
        return region

    def _goal(self, sim: LiberoSim) -> list[list[str]]:
        """The BDDL goal's parts (a conjunction), each as ``[predicate, *objects]``."""
        return [[str(g) for g in part] for part in sim.env.env.parsed_problem["goal_state"]]

    # -- pick and place ------------------------------------------------------------
    def _grasp(self, sim: LiberoSim, obj: str, rim: bool) -> tuple[np.ndarray, float]:
        """Grasp point of ``obj`` and gripper yaw: the candidate whose hand clears the scene most.

        A bowl or a plate is taken by its rim (the fingers straddle the wall, a
        plate's as low as the fingertips go), anything else across its middle
        where the cut is narrower than the gripper; the fingers close along the
        yawed y axis, yaws every 30 degrees.
        """
        lo, hi = world_bbox(sim, obj)
        centre = sim.data.xpos[sim.env.env.obj_body_id[obj]].copy()
        half, height = 0.5 * (hi - lo), hi[2] - lo[2]
        candidates = []  # (point, yaw, closing direction)
        for yaw in YAWS:
            u = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
            if rim:
                for sign in (1, -1):
                    point = centre + sign * (0.5 * (half[0] + half[1]) - 0.01) * u
                    point[2] = max(hi[2] - 0.02, lo[2] + 0.5 * height)
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
        skip = subtree(sim.model, sim.env.env.obj_body_id[obj]) | set(surfaces(sim.model))

        def score(c):
            point, yaw, u = c
            fingers = [point + s * 0.045 * u + [0, 0, z] for s in (1, -1) for z in (0.0, 0.04)]
            hand = [point + s * 0.10 * u + [0, 0, z] for s in (1, 0.5, 0, -0.5, -1) for z in (0.03, 0.1)]
            # clearer first; among equals the smaller turn
            return round(clearance(sim, np.array(fingers + hand), skip), 3), -abs(yaw)

        point, yaw, _ = max(candidates, key=score)
        return point, yaw

    @staticmethod
    def _place(sim: LiberoSim, target: str) -> tuple[np.ndarray, float]:
        """Where the carried object goes (xy) and the surface height; in a drawer, its front half."""
        xy, surface = place_point(sim, target)
        if target in sim.env.env.object_sites_dict and drawer_joint(sim, target) is not None:
            xy = xy + drawer_front_offset(sim, target)
        return xy, surface

    def _pick_place(self, sim: LiberoSim, mem: dict) -> np.ndarray:
        _, obj, target = mem["goal"]
        mem["timer"] += 1
        phase, t = mem["phase"], mem["timer"]
        if phase == 0:  # plan the grasp from the object's current pose
            # judged once: a plate tilted by a missed grasp is no longer flat
            rim = mem.setdefault("rim", any(k in obj for k in ("bowl", "mug", "frypan")) or too_wide(sim, obj))
            mem["grasp"], mem["yaw"] = self._grasp(sim, obj, rim)
            mem["obj_z0"] = float(world_bbox(sim, obj)[0][2])
            advance(mem)
            phase = 1
        grasp, yaw = mem["grasp"], mem["yaw"]
        eef = sim.eef_pos()
        if phase == 1:  # above the grasp; from over an opened drawer across first, then down
            above = grasp + [0, 0, 0.10]
            if np.linalg.norm(above - eef) < 0.01 or t > 80:
                advance(mem)
            if mem.get("high") and np.linalg.norm((above - eef)[:2]) > 0.02:
                above[2] = max(above[2], eef[2])
            return move(sim, mem, above, OPEN, yaw)
        if phase == 2:  # down to it (or until the fingers touch down)
            stalled = t > 8 and mem.get("last_z", np.inf) - eef[2] < 0.0005
            mem["last_z"] = eef[2]
            if np.linalg.norm(grasp - eef) < 0.007 or stalled or t > 50:
                advance(mem)
            return move(sim, mem, grasp, OPEN, yaw)
        if phase == 3:  # close
            if t > 12:
                advance(mem)
            return move(sim, mem, grasp, CLOSE, yaw)
        if phase == 4:  # lift; a miss (the object stayed down) starts over
            lifted = world_bbox(sim, obj)[0][2] - mem["obj_z0"]
            xy, surface = self._place(sim, target)
            mem["carry_z"] = max(grasp[2] + 0.15, surface + (grasp[2] - mem["obj_z0"]) + 0.08)
            if (t > 15 or eef[2] > mem["carry_z"] - 0.01) and lifted < 0.02:
                advance(mem, 0)
                return move(sim, mem, eef + [0, 0, 0.05], OPEN, yaw)
            if eef[2] > mem["carry_z"] - 0.01 or t > 60:
                body = sim.data.xpos[sim.env.env.obj_body_id[obj]]
                mem["offset"] = (body - eef).copy()
                mem["bottom"] = float(world_bbox(sim, obj)[0][2] - eef[2])
                advance(mem)
            return move(sim, mem, np.array([eef[0], eef[1], mem["carry_z"]]), CLOSE, yaw)
        xy, surface = self._place(sim, target)
        dest = np.array([*(xy - mem["offset"][:2]), mem["carry_z"]])
        if phase == 5:  # carry over the target
            if np.linalg.norm((dest - eef)[:2]) < 0.008 or t > 100:
                advance(mem)
            return move(sim, mem, dest, CLOSE, yaw)
        if phase == 6:  # lower until the object's bottom is just above the surface
            dest[2] = surface + 0.015 - mem["bottom"]
            if eef[2] - dest[2] < 0.006 or t > 60:
                advance(mem)
            return move(sim, mem, dest, CLOSE, yaw)
        if phase == 7:  # release
            if t > 10:
                advance(mem)
            return move(sim, mem, eef, OPEN, yaw)
        return move(sim, mem, eef + [0, 0, 0.05], OPEN, yaw)  # back off and wait
