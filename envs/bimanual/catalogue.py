"""The bimanual pretraining catalogue: two-arm tasks composed from the suite's parts, none a seen or unseen task.

The tabletop suite's pretraining catalogue (:mod:`vla_grpo.envs.tabletop.catalogue`)
is the CPU-sized stand-in for the robot pretraining a real VLA starts from;
this is the bimanual one (RoboTwin 2.0 pretrains on its own 50 tasks' domain-
randomised demos). Each of the ten task templates (a layout sampler, a goal
verb and a scripted expert) is re-used with other objects, other targets and
other colours:

* object swaps: "place the can on the pad", "move the cup next to the bowl",
  "pick up both mugs", "hand the bottle over to the left arm and place it on
  the coaster", "beat the mug with the hammer";
* colour words where a template's geometry fixes its object (the pot's
  handles, the nesting bowls): "lift the blue pot with both arms";
* every object is coloured from one palette that holds the seen *and* unseen
  colours of :func:`~vla_grpo.envs.bimanual.tasks.object_kinds`, and half the tasks
  draw their layouts from the unseen depth band.

So the ``unseen`` split (the seen tasks with new colours and depths) becomes a
new composition of parts the catalogue shows elsewhere, as LIBERO's held-out
tasks are for LIBERO-90. No instruction equals a seen or unseen task's, and
no task repeats a seen or unseen task's goal: the same verb on the same
objects, or, for the pot and bowl templates, on objects of the same colours
(a test checks both). The scripted experts solve 908 of 910 episodes (states 0..9 of the
91 tasks; ``python -m vla_grpo.envs.bimanual --pretrain --states 10``).
"""
from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

from ..base import TaskSpec
from ..scene.mjcf import SceneObject
from ..scene.tasks import Goal
from .tasks import HORIZON, TASKS, BimanualTask, Layout, object_kinds

PRETRAIN_SPLIT = "pretrain"

#: named colours (the seen and unseen colours of the suite's objects, and a few more)
PALETTE = {
    "red": (0.85, 0.15, 0.12, 1), "green": (0.2, 0.62, 0.32, 1), "blue": (0.2, 0.35, 0.9, 1),
    "yellow": (0.9, 0.75, 0.1, 1), "orange": (0.9, 0.5, 0.1, 1), "purple": (0.55, 0.2, 0.75, 1),
    "white": (0.95, 0.95, 0.92, 1), "black": (0.1, 0.1, 0.12, 1), "grey": (0.55, 0.57, 0.6, 1),
    "pink": (0.9, 0.35, 0.6, 1), "brown": (0.62, 0.42, 0.2, 1), "teal": (0.2, 0.55, 0.55, 1),
    "light blue": (0.4, 0.75, 0.9, 1), "salmon": (0.92, 0.5, 0.45, 1),
}

# -- candidates: (template, instruction, {template key: kind name}, named colours {key: colour}) ---------
_GRASPABLE = ("can", "cup", "mug", "bottle", "small_block", "phone")
_FLAT = ("stand", "coaster", "pad")


def _phrase(kind: str) -> str:
    return {"small_block": "block", "tall_block": "block"}.get(kind, kind)


def _candidates() -> list[tuple[str, str, dict[str, str], dict[str, str]]]:
    out: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
    for colour in ("blue", "green", "red", "white", "yellow", "purple"):
        out.append(("lift_pot", f"lift the {colour} pot with both arms", {"pot": "pot"}, {"pot": colour}))
    for target in ("can", "cup", "mug", "bottle", "bowl", "pot", "stand"):
        out.append(("beat_block_hammer", f"beat the {_phrase(target)} with the hammer",
                    {"hammer": "hammer", "block": target}, {}))
    for a, b in (("can", "can"), ("cup", "cup"), ("mug", "mug"), ("small_block", "small_block"), ("bowl", "bowl"),
                 ("bottle", "can"), ("can", "cup"), ("mug", "bottle"), ("cup", "bottle"), ("phone", "phone"),
                 ("microphone", "can"), ("bowl", "mug")):
        text = f"pick up both {_phrase(a)}s" if a == b else f"pick up the {_phrase(a)} and the {_phrase(b)}"
        out.append(("pick_dual_bottles", text, {"bottle_left": a, "bottle_right": b}, {}))
    for obj in _GRASPABLE:
        for flat in _FLAT:
            if (obj, flat) in (("phone", "stand"), ("cup", "coaster"), ("small_block", "pad")):
                continue
            out.append(("place_phone_stand", f"place the {_phrase(obj)} on the {flat}", {"phone": obj, "stand": flat}, {}))
    for flat in ("pad", "stand"):  # the bowl, in the cup's layout (cups and mugs are placed above)
        out.append(("place_empty_cup", f"place the bowl on the {flat}", {"cup": "bowl", "coaster": flat}, {}))
    for obj in ("can", "bottle", "cup", "mug", "small_block"):
        for target in ("pot", "bowl", "stand", "pad"):
            if (obj, target) != ("can", "pot"):
                out.append(("move_can_pot", f"move the {_phrase(obj)} next to the {target}", {"can": obj, "pot": target}, {}))
    for obj in ("small_block", "can", "cup", "bottle"):
        for target in ("mug", "can", "cup", "bowl"):
            if obj != target and (obj, target) != ("small_block", "mug"):
                out.append(("place_a2b_left", f"place the {_phrase(obj)} to the left of the {target}",
                            {"block": obj, "mug": target}, {}))
    for obj in ("bottle", "tall_block", "can"):
        out.append(("handover_mic", f"hand the {_phrase(obj)} over from the right arm to the left arm",
                    {"microphone": obj}, {}))
    for obj in ("microphone", "bottle", "tall_block"):
        for flat in _FLAT:
            if (obj, flat) != ("tall_block", "pad"):
                out.append(("handover_block", f"hand the {_phrase(obj)} over to the left arm and place it on the {flat}",
                            {"block": obj, "pad": flat}, {}))
    for top, bottom in (("blue", "red"), ("green", "yellow"), ("white", "purple")):
        out.append(("stack_bowls_two", f"stack the {top} bowl on the {bottom} bowl in the middle",
                    {"bowl_a": "bowl", "bowl_b": "bowl"}, {"bowl_b": top, "bowl_a": bottom}))
    for kind in ("can", "small_block", "cup"):
        out.append(("stack_bowls_two", f"stack the two {_phrase(kind)}s in the middle",
                    {"bowl_a": kind, "bowl_b": kind}, {}))
    return out


def _slug(text: str) -> str:
    return "_".join(w for w in text.replace(",", "").split() if w not in ("the", "with", "arms", "arm", "both"))


def pretrain_tasks(num_init_states: int = 50) -> list[BimanualTask]:
    """The whole catalogue, in a fixed order."""
    templates = {name: (horizon, goal) for name, horizon, _, goal, _ in TASKS}
    kinds = object_kinds(False)
    names = list(PALETTE)
    out = []
    for i, (template, text, keyed, named) in enumerate(_candidates()):
        name = f"{PRETRAIN_SPLIT}/{template}/{_slug(text)}"
        horizon, goal = templates[template]
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        objects = []
        for key, kind in keyed.items():
            colour = named.get(key) or names[int(rng.integers(len(names)))]
            objects.append(SceneObject(key, replace(kinds[kind], name=_phrase(kind), rgba=PALETTE[colour])))
        spec = TaskSpec(name, text, PRETRAIN_SPLIT, horizon, HORIZON[horizon], num_init_states)
        out.append(BimanualTask(spec, tuple(objects), goal, Layout(template, unseen=bool(i % 2))))
    return out


def goal_key(task: BimanualTask, colours: bool = True) -> tuple:
    """(verb, object, target) of a task's goal, each object as (shape, name[, colour]): what a
    catalogue task must not share with a seen or unseen task (colour variants differ by colour)."""
    g: Goal = task.goal

    def kind(key):
        k = task.kind(key)
        return (k.shape, k.name, k.rgba) if colours else (k.shape, k.name)

    return g.verb, kind(g.obj), kind(g.target) if g.target else None


__all__ = ["PALETTE", "PRETRAIN_SPLIT", "goal_key", "pretrain_tasks"]
