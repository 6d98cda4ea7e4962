"""Scripted tabletop experts: closed-loop state machines over the simulated state.

An expert reads the true simulator state (object poses, hand, fingers, what
is held) and returns one action; it keeps no memory, so it can take over at
any point of an episode. To hand out an *action chunk* that is executed
open-loop, it rolls a copy of the simulator forward and records the actions
it would take at each step: MuJoCo is deterministic, so the env replays that
chunk exactly and the chunk is as good as closed-loop control.
"""
from __future__ import annotations

import numpy as np

from ..scene.expert import (
    CARRY_BOTTOM,
    CLOSE,
    OPEN,
    TRANSIT_Z,
    grasp_height,
    move_action,
    plan_chunk,
    xy_dist,
)
from ..scene.mjcf import FINGER_HALF
from ..scene.sim import MAX_DELTA
from .sim import TabletopSim
from .tasks import FRONT_Y, LIFT_HEIGHT, TabletopTask


class TabletopExpert:
    """Scripted expert of one task.

    Call it with a :class:`TabletopSim` (the env's sub-env simulator) and a
    chunk size to get an ``[H, 7]`` float32 action chunk; :meth:`act` gives
    one closed-loop action.

    Args:
        task: the task to solve.
    """

    def __init__(self, task: TabletopTask) -> None:
        self.task = task

    def __call__(self, sim: TabletopSim, chunk_size: int) -> np.ndarray:
        return plan_chunk(self.act, sim, chunk_size, 7)

    def act(self, sim: TabletopSim) -> np.ndarray:
        """One action from the current simulated state."""
        goal = self.task.goal
        if goal.verb == "push_front":
            return self._push(sim)
        if sim.attached is not None and sim.attached != goal.obj:
            return move_action(sim.tcp, sim.tcp + [0, 0, MAX_DELTA], OPEN)  # drop it, back off
        if sim.attached == goal.obj:
            return self._carry(sim)
        if goal.verb != "lift" and self._in_goal_region(sim):
            return move_action(sim.tcp, sim.tcp + [0, 0, MAX_DELTA], OPEN)  # released: let it settle
        return self._fetch(sim)

    # -- pick and place ----------------------------------------------------
    def _fetch(self, sim: TabletopSim) -> np.ndarray:
        key, tcp = self.task.goal.obj, sim.tcp
        p = sim.pos(key)
        grasp = np.array([p[0], p[1], grasp_height(sim, key)])
        dxy = xy_dist(tcp, grasp)
        fingers_open = sim.finger_q.max() < 0.004
        if dxy < 0.006 and tcp[2] - grasp[2] < 0.004:
            return move_action(tcp, grasp, CLOSE)
        if dxy < 0.006:
            # descend only with the fingers open, else they land on the object
            target = grasp if fingers_open else tcp
            return move_action(tcp, target, OPEN)
        if dxy > 0.02 and tcp[2] < TRANSIT_Z - 0.01:
            return move_action(tcp, [tcp[0], tcp[1], TRANSIT_Z], OPEN)  # rise before moving across
        return move_action(tcp, [grasp[0], grasp[1], max(tcp[2], TRANSIT_Z) if dxy > 0.02 else tcp[2]], OPEN)

    def _carry(self, sim: TabletopSim) -> np.ndarray:
        goal, tcp = self.task.goal, sim.tcp
        bottom = sim.bottom(goal.obj)
        if goal.verb == "lift":
            return move_action(tcp, tcp + [0, 0, LIFT_HEIGHT + 0.04 - bottom], CLOSE)
        offset = sim.pos(goal.obj) - tcp
        dest = sim.pos(goal.target)[:2] - offset[:2]
        dxy = xy_dist(tcp, dest)
        if dxy > 0.004:
            if dxy > 0.02 and bottom < CARRY_BOTTOM - 0.01:
                return move_action(tcp, tcp + [0, 0, CARRY_BOTTOM - bottom], CLOSE)
            return move_action(tcp, [dest[0], dest[1], tcp[2] + max(0.0, CARRY_BOTTOM - bottom)], CLOSE)
        release = self._release_bottom(sim)
        if bottom > release + 0.002:
            return move_action(tcp, [dest[0], dest[1], tcp[2] - (bottom - release)], CLOSE)
        return move_action(tcp, tcp, OPEN)

    def _release_bottom(self, sim: TabletopSim) -> float:
        goal = self.task.goal
        if goal.verb == "place_on":
            return sim.top(goal.target) + 0.008
        return 0.025  # a short drop onto the basket floor

    def _in_goal_region(self, sim: TabletopSim) -> bool:
        goal = self.task.goal
        p, q = sim.pos(goal.obj), sim.pos(goal.target)
        half = sim.task.kind(goal.target).collision_half
        return abs(p[0] - q[0]) < 0.8 * half[0] and abs(p[1] - q[1]) < 0.8 * half[1]

    # -- push --------------------------------------------------------------
    def _push(self, sim: TabletopSim) -> np.ndarray:
        key, tcp = self.task.goal.obj, sim.tcp
        kind = sim.task.kind(key)
        hx = kind.collision_half[0]
        p = sim.pos(key)
        # wide objects (the plate) are pushed with both open fingers, narrow ones with the closed pair
        gripper = OPEN if hx > 0.045 else CLOSE
        push_z = 0.006 if kind.shape == "plate" else 0.012
        back = float(sim.extent(key)[1]) + FINGER_HALF[1]  # tcp-to-centre distance when touching
        # Keep pushing while low, behind the centre and in line. (Open fingers meet a
        # round rim off its centre line, closer than `back`; an object kicked
        # ahead is simply followed.)
        if tcp[2] < push_z + 0.01 and tcp[1] - p[1] > 0.01 and abs(tcp[0] - p[0]) < 0.025:
            goal_y = FRONT_Y - 0.03 + back
            return move_action(tcp, [p[0], goal_y, push_z], gripper, speed=0.7)
        start = np.array([p[0], p[1] + back + 0.012, push_z])
        if xy_dist(tcp, start) > 0.006:
            if tcp[2] < TRANSIT_Z - 0.01 and xy_dist(tcp, start) > 0.02:
                return move_action(tcp, [tcp[0], tcp[1], TRANSIT_Z], gripper)
            return move_action(tcp, [start[0], start[1], max(tcp[2], TRANSIT_Z)], gripper)
        return move_action(tcp, start, gripper)
