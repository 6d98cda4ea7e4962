"""Scripted bimanual experts: memoryless per-arm state machines over the simulated state.

Like every scene expert (:mod:`vla_grpo.envs.scene.expert`: chunk planning, the move
primitive, heights), an expert reads the true state (poses, hands, what each hand holds) and returns
one 14-D action; a chunk comes from rolling a copy of the simulator forward,
so the open-loop chunk replays exactly. Each task combines a few per-arm
skills: fetch (reach over a grasp point, descend, close), carry (rise, move,
lower, release), hold still, go home; the task decides which arm does what
from the state alone (e.g. in a handover: nobody holds it -> the right arm
fetches; the right holds it -> both meet in the middle; both hold it -> the
right lets go).
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
from ..scene.sim import MAX_DELTA
from .scene import HAMMER_HEAD, POT_HANDLE_HALF, POT_HANDLE_X, grasp_parts, pot_handle_z
from .sim import BimanualSim
from .tasks import BimanualTask

LEFT, RIGHT = 0, 1
#: handover: where the right hand brings the object (x, y) and the object's bottom there
HANDOVER_XY = (0.0, 0.0)
HANDOVER_BOTTOM = 0.05
#: the giving hand grips this far above the object's bottom; the taking hand 7 cm above that
LOW_GRIP, HIGH_GRIP = 0.01, 0.07
#: where stack_bowls_two puts the first bowl (x)
STACK_X = -0.03
HOME = {LEFT: (-0.2, 0.17, 0.2), RIGHT: (0.2, 0.17, 0.2)}


# -- per-arm skills ------------------------------------------------------------------
def hold(sim: BimanualSim, arm: int, gripper: float) -> np.ndarray:
    return move_action(sim.tcp(arm), sim.tcp(arm), gripper)


def home(sim: BimanualSim, arm: int) -> np.ndarray:
    """Open, rise to the transit height, then go to the arm's home corner."""
    tcp, dest = sim.tcp(arm), np.array(HOME[arm])
    if xy_dist(tcp, dest) > 0.02 and tcp[2] < TRANSIT_Z - 0.01:
        return move_action(tcp, [tcp[0], tcp[1], TRANSIT_Z], OPEN)
    return move_action(tcp, dest, OPEN)


def fetch(sim: BimanualSim, arm: int, grasp) -> np.ndarray:
    """Reach over ``grasp`` (x, y, z of the tool centre) at transit height, descend open, close."""
    tcp = sim.tcp(arm)
    dxy = xy_dist(tcp, grasp)
    if dxy < 0.006 and tcp[2] - grasp[2] < 0.004:
        return move_action(tcp, grasp, CLOSE)
    if dxy < 0.006:
        fingers_open = sim.finger_q(arm).max() < 0.004  # descend only open, else they land on it
        return move_action(tcp, grasp if fingers_open else tcp, OPEN)
    if dxy > 0.02 and tcp[2] < TRANSIT_Z - 0.01:
        return move_action(tcp, [tcp[0], tcp[1], TRANSIT_Z], OPEN)  # rise before moving across
    return move_action(tcp, [grasp[0], grasp[1], max(tcp[2], TRANSIT_Z) if dxy > 0.02 else tcp[2]], OPEN)


def carry(sim: BimanualSim, arm: int, key: str, dest_xy, release_bottom: float,
          carry_bottom: float = CARRY_BOTTOM) -> np.ndarray:
    """Carry the held ``key`` with its bottom at ``carry_bottom`` over ``dest_xy``, lower, release."""
    tcp, bottom = sim.tcp(arm), sim.bottom(key)
    dest = np.asarray(dest_xy[:2]) - (sim.pos(key) - tcp)[:2]
    dxy = xy_dist(tcp, dest)
    if dxy > 0.004:
        if dxy > 0.02 and bottom < carry_bottom - 0.01:
            return move_action(tcp, tcp + [0, 0, carry_bottom - bottom], CLOSE)
        return move_action(tcp, [dest[0], dest[1], tcp[2] + max(0.0, carry_bottom - bottom)], CLOSE)
    if bottom > release_bottom + 0.002:
        return move_action(tcp, [dest[0], dest[1], tcp[2] - (bottom - release_bottom)], CLOSE)
    return move_action(tcp, tcp, OPEN)


def pick_place(sim: BimanualSim, arm: int, key: str, dest_xy, release_bottom: float) -> np.ndarray:
    """Fetch ``key`` and put it down centred on ``dest_xy``; back off once it is there."""
    if arm in sim.holders(key):
        return carry(sim, arm, key, dest_xy, release_bottom)
    if xy_dist(sim.pos(key), dest_xy) < 0.012:
        return home(sim, arm)
    return fetch(sim, arm, body_grasp(sim, key))


def body_grasp(sim: BimanualSim, key: str) -> np.ndarray:
    """Tool-centre grasp point of an ordinary object: over its centre, tabletop height."""
    p = sim.pos(key)
    return np.array([p[0], p[1], grasp_height(sim, key)])


def side_arm(sim: BimanualSim, key: str) -> int:
    """The arm on the object's side of the table."""
    return LEFT if sim.pos(key)[0] < 0 else RIGHT


def both(sim: BimanualSim, actions: dict[int, np.ndarray]) -> np.ndarray:
    """A 14-D action from per-arm actions; an arm left out holds still, open."""
    out = np.zeros(14)
    for arm in (LEFT, RIGHT):
        out[7 * arm : 7 * arm + 7] = actions[arm] if arm in actions else hold(sim, arm, OPEN)
    return out


# -- tasks ---------------------------------------------------------------------------
def lift_pot(sim: BimanualSim) -> np.ndarray:
    pot = sim.task.goal.obj
    holders = sim.holders(pot)
    acts = {}
    for arm, sx in ((LEFT, -1.0), (RIGHT, 1.0)):
        if arm in holders:
            lift = 0.05 + 0.04 - sim.bottom(pot) if holders == {LEFT, RIGHT} else 0.0  # wait for the other hand
            acts[arm] = move_action(sim.tcp(arm), sim.tcp(arm) + [0, 0, lift], CLOSE)
            continue
        handle = sim.to_world(pot, (sx * POT_HANDLE_X, 0.0, pot_handle_z(sim.task.kind(pot))))
        # fingers from just above the rim down over the tab's top 2.5 cm
        z = handle[2] + POT_HANDLE_HALF[2] - 0.025
        acts[arm] = fetch(sim, arm, [handle[0], handle[1], z])
    return both(sim, acts)


def pick_dual_bottles(sim: BimanualSim) -> np.ndarray:
    acts = {}
    for arm, key in ((LEFT, sim.task.goal.obj), (RIGHT, sim.task.goal.target)):
        if arm in sim.holders(key):
            acts[arm] = move_action(sim.tcp(arm), sim.tcp(arm) + [0, 0, 0.1 - sim.bottom(key)], CLOSE)
        else:
            acts[arm] = fetch(sim, arm, body_grasp(sim, key))
    return both(sim, acts)


def beat_block_hammer(sim: BimanualSim) -> np.ndarray:
    hammer, block = sim.task.goal.obj, sim.task.goal.target
    arm = side_arm(sim, hammer) if not sim.holders(hammer) else next(iter(sim.holders(hammer)))
    if arm not in sim.holders(hammer):
        (cx, cy), _ = grasp_parts(sim.task.kind(hammer))[0]
        handle = sim.to_world(hammer, (cx, cy, 0.0))
        return both(sim, {arm: fetch(sim, arm, [handle[0], handle[1], sim.bottom(hammer) + 0.006])})
    tcp, head = sim.tcp(arm), sim.hammer_head(hammer)
    head_bottom = head[2] - HAMMER_HEAD[1][2]
    dest = sim.pos(block)[:2] - (head - tcp)[:2]
    clear = sim.top(block) + 0.03
    dxy = xy_dist(tcp, dest)
    if dxy > 0.004:
        if dxy > 0.02 and head_bottom < clear - 0.01:
            return both(sim, {arm: move_action(tcp, tcp + [0, 0, clear - head_bottom], CLOSE)})
        return both(sim, {arm: move_action(tcp, [dest[0], dest[1], tcp[2] + max(0.0, clear - head_bottom)], CLOSE)})
    return both(sim, {arm: move_action(tcp, [dest[0], dest[1], tcp[2] - (head_bottom - sim.top(block))], CLOSE)})


def place_on_target(sim: BimanualSim) -> np.ndarray:
    """place_phone_stand / place_empty_cup: the arm on the object's side puts it on the target."""
    key, target = sim.task.goal.obj, sim.task.goal.target
    arm = side_arm(sim, key) if not sim.holders(key) else next(iter(sim.holders(key)))
    return both(sim, {arm: pick_place(sim, arm, key, sim.pos(target)[:2], sim.top(target) + 0.008)})


def move_can_pot(sim: BimanualSim) -> np.ndarray:
    can, pot = sim.task.goal.obj, sim.task.goal.target
    arm = side_arm(sim, can) if not sim.holders(can) else next(iter(sim.holders(can)))
    q = sim.pos(pot)
    gap = sim.task.kind(can).footprint + sim.task.kind(pot).footprint + 0.03
    side = 1.0 if arm == RIGHT else -1.0
    return both(sim, {arm: pick_place(sim, arm, can, (q[0] + side * gap, q[1]), 0.004)})


def place_a2b_left(sim: BimanualSim) -> np.ndarray:
    key, target = sim.task.goal.obj, sim.task.goal.target
    arm = side_arm(sim, key) if not sim.holders(key) else next(iter(sim.holders(key)))
    q = sim.pos(target)
    gap = sim.task.kind(key).footprint + sim.task.kind(target).footprint + 0.035
    return both(sim, {arm: pick_place(sim, arm, key, (q[0] - gap, q[1]), 0.004)})


def _handover(sim: BimanualSim, key: str) -> dict[int, np.ndarray] | None:
    """Right arm -> left arm handover; None once the left hand alone holds ``key``."""
    holders = sim.holders(key)
    bottom = sim.bottom(key)
    if holders == {LEFT}:
        return None
    if holders == {LEFT, RIGHT}:
        return {LEFT: hold(sim, LEFT, CLOSE), RIGHT: hold(sim, RIGHT, OPEN)}
    meet = np.array([*HANDOVER_XY, HANDOVER_BOTTOM + LOW_GRIP])
    hover = np.array([*HANDOVER_XY, HANDOVER_BOTTOM + 2 * sim.task.kind(key).collision_half[2] + 0.02])
    p = sim.pos(key)
    if holders == {RIGHT}:
        giver = move_action(sim.tcp(RIGHT), meet, CLOSE)
        if xy_dist(sim.tcp(RIGHT), meet) > 0.004 or abs(sim.tcp(RIGHT)[2] - meet[2]) > 0.004:
            return {RIGHT: giver, LEFT: move_action(sim.tcp(LEFT), hover, OPEN)}
        return {RIGHT: giver, LEFT: fetch(sim, LEFT, [p[0], p[1], bottom + HIGH_GRIP])}
    return {RIGHT: fetch(sim, RIGHT, [p[0], p[1], bottom + LOW_GRIP]), LEFT: move_action(sim.tcp(LEFT), hover, OPEN)}


def handover_mic(sim: BimanualSim) -> np.ndarray:
    key = sim.task.goal.obj
    acts = _handover(sim, key)
    if acts is None:
        acts = {LEFT: move_action(sim.tcp(LEFT), sim.tcp(LEFT) + [0, 0, MAX_DELTA], CLOSE)}
    return both(sim, acts)


def handover_block(sim: BimanualSim) -> np.ndarray:
    key, pad = sim.task.goal.obj, sim.task.goal.target
    if not sim.holders(key) and sim.pos(key)[0] < 0:  # put down on the pad: back off
        return both(sim, {LEFT: home(sim, LEFT), RIGHT: home(sim, RIGHT)})
    acts = _handover(sim, key)
    if acts is not None:
        return both(sim, acts)
    # The block rises out of the open right fingers (their tops are at ~0.11 m, below
    # CARRY_BOTTOM), then moves away; only then the right arm leaves.
    right = home(sim, RIGHT) if xy_dist(sim.pos(key), sim.tcp(RIGHT)) > 0.08 else hold(sim, RIGHT, OPEN)
    left = carry(sim, LEFT, key, sim.pos(pad)[:2], sim.top(pad) + 0.008)
    return both(sim, {LEFT: left, RIGHT: right})


def stack_bowls_two(sim: BimanualSim) -> np.ndarray:
    """The left arm moves bowl A to the middle (same depth); then the right arm stacks bowl B on it."""
    b, a = sim.task.goal.obj, sim.task.goal.target
    pa = sim.pos(a)
    a_placed = not sim.holders(a) and abs(pa[0] - STACK_X) < 0.02
    acts = {LEFT: home(sim, LEFT) if a_placed else pick_place(sim, LEFT, a, (STACK_X, pa[1]), 0.004)}
    if RIGHT in sim.holders(b):
        if a_placed and xy_dist(sim.tcp(LEFT), pa) > 0.1:
            acts[RIGHT] = carry(sim, RIGHT, b, pa[:2], sim.top(a) + 0.008)
        else:  # wait, bowl lifted, for the left arm to clear the middle
            acts[RIGHT] = move_action(sim.tcp(RIGHT), sim.tcp(RIGHT) + [0, 0, CARRY_BOTTOM - sim.bottom(b)], CLOSE)
    else:
        acts[RIGHT] = fetch(sim, RIGHT, body_grasp(sim, b))
    return both(sim, acts)


_EXPERTS = {
    "lift_pot": lift_pot, "beat_block_hammer": beat_block_hammer, "pick_dual_bottles": pick_dual_bottles,
    "place_phone_stand": place_on_target, "move_can_pot": move_can_pot, "place_a2b_left": place_a2b_left,
    "place_empty_cup": place_on_target, "handover_mic": handover_mic, "handover_block": handover_block,
    "stack_bowls_two": stack_bowls_two,
}


class BimanualExpert:
    """Scripted expert of one task: ``expert(sim, chunk_size) -> [H, 14]`` float32 actions.

    Args:
        task: the task to solve.
    """

    def __init__(self, task: BimanualTask) -> None:
        self.task = task
        self._act = _EXPERTS[task.layout.name]

    def act(self, sim: BimanualSim) -> np.ndarray:
        """One closed-loop action from the current simulated state."""
        return self._act(sim)

    def __call__(self, sim: BimanualSim, chunk_size: int) -> np.ndarray:
        return plan_chunk(self.act, sim, chunk_size, 14)
