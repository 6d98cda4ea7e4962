"""What the scripted experts share: chunks planned on a look-ahead clone, dead-beat moves, transit heights.

An expert reads the true simulator state and returns one action; it keeps no
memory, so it can take over at any point of an episode. :func:`plan_chunk`
turns it into an open-loop *action chunk* by stepping a clone of the
simulator: MuJoCo is deterministic, so the env replays that chunk exactly.
"""
from __future__ import annotations

import numpy as np

from .sim import MAX_DELTA, SceneSim


def plan_chunk(act, sim, chunk_size: int, action_dim: int) -> np.ndarray:
    """An ``[H, action_dim]`` chunk of closed-loop expert actions, planned on a clone of ``sim``.

    ``act(sim)`` gives one action; the clone is stepped with it, so the chunk is
    what the expert would do step by step, executed open-loop by the env.
    """
    look_ahead = sim.clone()
    out = np.zeros((chunk_size, action_dim), dtype=np.float32)
    for h in range(chunk_size):
        out[h] = act(look_ahead)
        look_ahead.step(out[h])
        if look_ahead.success():
            out[h + 1 :] = out[h]  # the env stops here; the rest is never executed
            break
    return out


#: tool-centre height for empty-handed moves: above the tallest object (~11 cm)
TRANSIT_Z = 0.14
#: carried objects travel with their bottom this high: above every object and basket wall
CARRY_BOTTOM = 0.135
#: gripper commands (an action's last entry: > 0 closes)
OPEN, CLOSE = -1.0, 1.0


def move_action(tcp: np.ndarray, target: np.ndarray, gripper: float, speed: float = 1.0) -> np.ndarray:
    """One hand's 7-D action moving its tool centre towards ``target`` (dead-beat, capped per axis)."""
    a = np.zeros(7)
    a[:3] = np.clip((np.asarray(target) - tcp) / MAX_DELTA, -speed, speed)
    a[6] = gripper
    return a


def xy_dist(a: np.ndarray, b: np.ndarray) -> float:
    """Distance of two points in the table plane."""
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


def grasp_height(sim: SceneSim, key: str) -> float:
    """Tool-centre z to grasp ``key``: fingers overlap its top ~3.5 cm, clear of plates."""
    height = 2 * sim.task.kind(key).collision_half[2]
    return sim.bottom(key) + max(0.018, height - 0.035)
