"""The bimanual task catalogue: ten RoboTwin-2.0-style tasks, seen and unseen variants.

Horizons follow RoboTwin 2.0's three bands (simulator control steps, 50 Hz):
short (lift pot, beat block with hammer, pick dual bottles, place phone on
stand), medium (move can to pot, place A left of B, place empty cup, hand over
microphone) and long (hand over block, stack two bowls).

Each task has a ``train`` variant and an ``unseen`` one: the same goal and
instruction with **new object colours** and objects drawn from a **disjoint
band of table depth** (``y`` in ``[-0.10, 0.00]`` seen, ``[0.01, 0.11]``
unseen). Arms only reach their own side and a strip across the middle
(:data:`REACH_X`), so handovers need both hands.

Initial state ``k`` of a task is drawn from ``numpy.random.default_rng((crc32(name), k))``:
a pure function of the task name and ``k``. Everything here is plain frozen
data and module-level functions, so a suite pickles into worker processes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..base import TRAIN_SPLIT, TaskSpec
from ..scene.mjcf import HAND_START_Z, ObjectKind, SceneObject
from ..scene.tasks import Goal, SceneTask

UNSEEN_SPLIT = "unseen"
#: x range each arm's tool centre can reach: its own side plus a strip across the middle
REACH_X = {"left": (-0.3, 0.12), "right": (-0.12, 0.3)}
#: seen / unseen depth bands of object centres (y)
Y_BANDS = {False: (-0.10, 0.0), True: (0.01, 0.11)}
#: "lift" goals: the object's bottom must rise above this (metres)
LIFT_HEIGHT = 0.06
#: step limits (simulator control steps) by RoboTwin horizon band
HORIZON = {"short": 120, "medium": 200, "long": 300}


def object_kinds(unseen: bool) -> dict[str, ObjectKind]:
    """Object kinds in their seen or unseen colours (same names, shapes and sizes)."""
    c = {  # name: (seen rgba, unseen rgba)
        "pot": ((0.55, 0.57, 0.6, 1), (0.75, 0.42, 0.2, 1)),
        "hammer": ((0.62, 0.42, 0.2, 1), (0.2, 0.55, 0.55, 1)),
        "block": ((0.85, 0.15, 0.12, 1), (0.55, 0.2, 0.75, 1)),
        "bottle": ((0.2, 0.65, 0.3, 1), (0.9, 0.5, 0.1, 1)),
        "phone": ((0.1, 0.1, 0.12, 1), (0.85, 0.85, 0.88, 1)),
        "stand": ((0.45, 0.5, 0.62, 1), (0.55, 0.45, 0.35, 1)),
        "can": ((0.9, 0.75, 0.1, 1), (0.2, 0.4, 0.9, 1)),
        "cup": ((0.95, 0.95, 0.92, 1), (0.9, 0.35, 0.6, 1)),
        "coaster": ((0.3, 0.5, 0.85, 1), (0.3, 0.7, 0.3, 1)),
        "mug": ((0.2, 0.62, 0.32, 1), (0.85, 0.8, 0.2, 1)),
        "microphone": ((0.25, 0.25, 0.28, 1), (0.7, 0.15, 0.15, 1)),
        "pad": ((0.2, 0.35, 0.9, 1), (0.9, 0.6, 0.2, 1)),
        "bowl": ((0.92, 0.5, 0.45, 1), (0.4, 0.75, 0.9, 1)),
    }
    rgba = {k: v[1 if unseen else 0] for k, v in c.items()}
    return {
        "pot": ObjectKind("pot", "pot", (0.06, 0.06, 0.035), rgba["pot"], mass=0.4),
        "hammer": ObjectKind("hammer", "hammer", (0.035, 0.065, 0.02), rgba["hammer"]),
        "block": ObjectKind("block", "box", (0.025, 0.025, 0.025), rgba["block"], graspable=False, mass=1.0),
        "bottle": ObjectKind("bottle", "bottle", (0.022, 0.022, 0.042), rgba["bottle"]),
        "phone": ObjectKind("phone", "box", (0.032, 0.018, 0.014), rgba["phone"]),
        "stand": ObjectKind("phone stand", "box", (0.05, 0.035, 0.015), rgba["stand"], graspable=False, mass=1.0),
        "can": ObjectKind("can", "can", (0.028, 0.028, 0.036), rgba["can"]),
        "cup": ObjectKind("cup", "mug", (0.03, 0.03, 0.035), rgba["cup"]),
        "coaster": ObjectKind("coaster", "plate", (0.05, 0.05, 0.006), rgba["coaster"], graspable=False, mass=0.3),
        "small_block": ObjectKind("block", "box", (0.022, 0.022, 0.025), rgba["block"]),
        "mug": ObjectKind("mug", "mug", (0.031, 0.031, 0.036), rgba["mug"]),
        "microphone": ObjectKind("microphone", "bottle", (0.02, 0.02, 0.065), rgba["microphone"]),
        "tall_block": ObjectKind("block", "box", (0.02, 0.02, 0.065), rgba["block"]),
        "pad": ObjectKind("pad", "plate", (0.055, 0.055, 0.006), rgba["pad"], graspable=False, mass=0.3),
        "bowl": ObjectKind("bowl", "bowl", (0.035, 0.035, 0.022), rgba["bowl"]),
    }


# Goal verbs (vla_grpo.envs.scene.tasks.Goal; BimanualSim.success): ``lift_both`` (obj lifted,
# held by both hands), ``lift_pair`` (obj and target both lifted), ``beat`` (hammer head down on
# target), ``place_on`` (obj resting on target, released), ``beside`` (obj released on the table
# next to target), ``left_of`` (obj released on the table left of target), ``handover`` (obj held
# up by the left hand only), ``stack`` (obj on target, released, the pair near the middle of the table).


# -- layouts: (rng, unseen) -> {key: (x, y, yaw)} ---------------------------------------
def _y(rng: np.random.Generator, unseen: bool) -> float:
    return float(rng.uniform(*Y_BANDS[unseen]))


def _yaw(rng: np.random.Generator, scale: float = 0.2) -> float:
    return float(rng.uniform(-scale, scale))


def _side(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _lift_pot(rng, unseen):
    return {"pot": (rng.uniform(-0.04, 0.04), _y(rng, unseen), _yaw(rng, 0.1))}


def _beat_block_hammer(rng, unseen):
    s = _side(rng)
    return {"hammer": (s * rng.uniform(0.11, 0.18), _y(rng, unseen), _yaw(rng, 0.15)),
            "block": (-s * rng.uniform(0.0, 0.08), _y(rng, unseen), _yaw(rng))}


def _pick_dual_bottles(rng, unseen):
    return {"bottle_left": (-rng.uniform(0.08, 0.2), _y(rng, unseen), _yaw(rng)),
            "bottle_right": (rng.uniform(0.08, 0.2), _y(rng, unseen), _yaw(rng))}


def _place_phone_stand(rng, unseen):
    s = _side(rng)
    return {"phone": (s * rng.uniform(0.14, 0.21), _y(rng, unseen), _yaw(rng)),
            "stand": (-s * rng.uniform(0.0, 0.06), _y(rng, unseen), _yaw(rng, 0.1))}


def _move_can_pot(rng, unseen):
    s = _side(rng)
    return {"can": (s * rng.uniform(0.14, 0.22), _y(rng, unseen), _yaw(rng)),
            "pot": (-s * rng.uniform(0.04, 0.1), _y(rng, unseen), _yaw(rng, 0.1))}


def _place_a2b_left(rng, unseen):
    return {"block": (rng.uniform(0.16, 0.22), _y(rng, unseen), _yaw(rng)),
            "mug": (rng.uniform(0.0, 0.07), _y(rng, unseen), _yaw(rng))}


def _place_empty_cup(rng, unseen):
    s = _side(rng)
    return {"cup": (s * rng.uniform(0.12, 0.2), _y(rng, unseen), _yaw(rng)),
            "coaster": (-s * rng.uniform(0.0, 0.06), _y(rng, unseen), _yaw(rng))}


def _handover_mic(rng, unseen):
    return {"microphone": (rng.uniform(0.14, 0.22), _y(rng, unseen), _yaw(rng))}


def _handover_block(rng, unseen):
    return {"block": (rng.uniform(0.16, 0.22), _y(rng, unseen), _yaw(rng)),
            "pad": (-rng.uniform(0.16, 0.22), _y(rng, unseen), _yaw(rng))}


def _stack_bowls_two(rng, unseen):
    return {"bowl_a": (-rng.uniform(0.11, 0.2), _y(rng, unseen), _yaw(rng)),
            "bowl_b": (rng.uniform(0.11, 0.2), _y(rng, unseen), _yaw(rng))}


def _hands(rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    # the hands start high at the back corners, hiding nothing from the camera
    out = {}
    for arm, sx in (("left", -1.0), ("right", 1.0)):
        out[f"{arm}_hand"] = (float(sx * 0.2 + rng.uniform(-0.02, 0.02)), float(rng.uniform(0.19, 0.21)),
                              float(HAND_START_Z + rng.uniform(-0.02, 0.02)))
    return out


_LAYOUTS: dict[str, Callable] = {
    "lift_pot": _lift_pot, "beat_block_hammer": _beat_block_hammer, "pick_dual_bottles": _pick_dual_bottles,
    "place_phone_stand": _place_phone_stand, "move_can_pot": _move_can_pot, "place_a2b_left": _place_a2b_left,
    "place_empty_cup": _place_empty_cup, "handover_mic": _handover_mic, "handover_block": _handover_block,
    "stack_bowls_two": _stack_bowls_two,
}


@dataclass(frozen=True)
class Layout:
    """Seeded initial layouts of one task (``name`` picks the sampler; ``unseen`` its band)."""

    name: str
    unseen: bool

    def sample(self, rng: np.random.Generator) -> dict[str, tuple[float, ...]]:
        out = {k: tuple(float(v) for v in p) for k, p in _LAYOUTS[self.name](rng, self.unseen).items()}
        out.update(_hands(rng))
        return out


@dataclass(frozen=True)
class BimanualTask(SceneTask):
    """A two-arm task (``goal``: a :class:`Goal`, ``layout``: a :class:`Layout`), every state from its sampler."""


# -- the catalogue ---------------------------------------------------------------------
# (name, horizon, instruction, goal, objects as (key, kind name))
TASKS = (
    ("lift_pot", "short", "lift the pot with both arms", Goal("lift_both", "pot"), (("pot", "pot"),)),
    ("beat_block_hammer", "short", "beat the block with the hammer", Goal("beat", "hammer", "block"),
     (("hammer", "hammer"), ("block", "block"))),
    ("pick_dual_bottles", "short", "pick up both bottles", Goal("lift_pair", "bottle_left", "bottle_right"),
     (("bottle_left", "bottle"), ("bottle_right", "bottle"))),
    ("place_phone_stand", "short", "place the phone on the stand", Goal("place_on", "phone", "stand"),
     (("phone", "phone"), ("stand", "stand"))),
    ("move_can_pot", "medium", "move the can next to the pot", Goal("beside", "can", "pot"),
     (("can", "can"), ("pot", "pot"))),
    ("place_a2b_left", "medium", "place the block to the left of the mug", Goal("left_of", "block", "mug"),
     (("block", "small_block"), ("mug", "mug"))),
    ("place_empty_cup", "medium", "place the empty cup on the coaster", Goal("place_on", "cup", "coaster"),
     (("cup", "cup"), ("coaster", "coaster"))),
    ("handover_mic", "medium", "hand the microphone over from the right arm to the left arm",
     Goal("handover", "microphone"), (("microphone", "microphone"),)),
    ("handover_block", "long", "hand the block over to the left arm and place it on the pad",
     Goal("place_on", "block", "pad"), (("block", "tall_block"), ("pad", "pad"))),
    ("stack_bowls_two", "long", "stack the two bowls in the middle", Goal("stack", "bowl_b", "bowl_a"),
     (("bowl_a", "bowl"), ("bowl_b", "bowl"))),
)


def build_catalogue(num_init_states: int = 50) -> list[BimanualTask]:
    """All tasks in ``task_index`` order: the ten seen tasks, then their unseen variants."""
    out = []
    for unseen in (False, True):
        kinds = object_kinds(unseen)
        split = UNSEEN_SPLIT if unseen else TRAIN_SPLIT
        for name, horizon, text, goal, objs in TASKS:
            objects = tuple(SceneObject(key, kinds[kind]) for key, kind in objs)
            full = f"{split}/{name}" if unseen else name
            spec = TaskSpec(full, text, split, horizon, HORIZON[horizon], num_init_states)
            out.append(BimanualTask(spec, objects, goal, Layout(name, unseen)))
    return out
