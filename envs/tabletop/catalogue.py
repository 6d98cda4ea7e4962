"""The pretraining catalogue: tabletop tasks composed from the suite's parts, none of them a seen or unseen task.

Real VLAs start from a broad robot pretraining (OXE, LIBERO-90) before a few
demos of the target tasks; this is its CPU-sized stand-in, the ``pretrain``
split of ``TabletopSuite(pretrain_catalogue=True)``. Every task recombines
objects, verbs, relations and scenes of the suite:

* **spatial** scenes (two red bowls, plate, mug, cookie box): "pick up the red
  bowl <relation>" for every relation of the seen *and* unseen spatial tasks plus
  five new ones, and "... and place it on the plate" for the five new relations;
* **lane** scenes (a basket and three objects in lanes, three scenes each):
  lift, push to the front, put in the basket, put on the plate, for every
  grocery (the unseen ones included), the cookie box and the red bowl.

So every word, object and relation of the unseen splits appears here in other
combinations ("behind the mug", "right side", "alphabet soup", "push ... to
the front", "the bowl"), while no instruction, in any phrasing, equals one of a
seen or unseen task (the lane tasks leave out the nine (verb, object) pairs of
the goal family, and the grocery-into-basket pairs of the object family; a
test checks every phrasing against the held-out ones).
"""
from __future__ import annotations

import zlib

import numpy as np

from ..base import TaskSpec
from ..scene.mjcf import SceneObject
from .layouts import AnchoredLayout, LaneLayout
from .phrasing import phrasings
from .tasks import (
    BASKET,
    BLUE_BOWL,
    COOKIE_BOX,
    MAX_STEPS,
    MUG,
    PLATE,
    RED_BOWL,
    SEEN_GROCERIES,
    SPATIAL_OBJECTS,
    SPATIAL_RELATIONS,
    UNSEEN_GROCERIES,
    Goal,
    TabletopTask,
)

PRETRAIN_SPLIT = "pretrain"
#: new relations (name, phrase, anchors of bowl_a, bowl_b, plate, mug, cookie_box), none in a seen or unseen task
NEW_RELATIONS = (
    ("behind_cookie_box", "behind the cookie box",
     (0.0, 0.06), (0.19, -0.08), (-0.17, -0.1), (-0.17, 0.08), (0.0, -0.1)),
    ("in_front_of_plate", "in front of the plate",
     (0.1, -0.05), (-0.08, 0.12), (0.1, 0.13), (-0.17, -0.04), (-0.22, 0.13)),
    ("next_to_mug", "next to the mug",
     (-0.05, 0.04), (-0.2, -0.1), (0.02, -0.12), (0.08, 0.04), (0.2, 0.11)),
    ("in_front_of_cookie_box", "in front of the cookie box",
     (-0.1, -0.03), (0.08, 0.12), (0.12, -0.06), (0.22, 0.1), (-0.1, 0.11)),
    ("between_plate_cookie_box", "between the plate and the cookie box",
     (0.0, 0.04), (0.05, -0.13), (-0.17, 0.04), (-0.16, -0.13), (0.165, 0.04)),
)
#: lane-scene objects a task may act on (the bowl and mug only as bystanders: their verbs are the goal family's)
ACTORS = (*SEEN_GROCERIES, *UNSEEN_GROCERIES, COOKIE_BOX, RED_BOWL)
BYSTANDERS = (*ACTORS, BLUE_BOWL, MUG)
VERBS = ("lift", "push_front", "place_in", "place_on")
SCENES_PER_TASK = 3


def _taken_by_the_suite(verb: str, name: str) -> bool:
    """(verb, object) pairs whose instruction a seen or unseen task already uses."""
    groceries = {k.name for k in (*SEEN_GROCERIES, *UNSEEN_GROCERIES)}
    return verb == "place_in" and name in groceries


def _spec(name: str, goal: Goal, n: int, obj: str, target: str | None = None,
          relational: bool = False) -> TaskSpec:
    train, held_out = phrasings(goal.verb, obj, target, relational)
    return TaskSpec(name, train[0], PRETRAIN_SPLIT, PRETRAIN_SPLIT, MAX_STEPS[goal.verb], n, train, held_out)


def spatial_pretrain_tasks(n: int) -> list[TabletopTask]:
    """Lift the red bowl named by any relation; place it on the plate for the new relations."""
    keys = [o.key for o in SPATIAL_OBJECTS]
    out = []
    known = [(name, rel, mirror, anchors) for name, rel, _, mirror, *anchors in SPATIAL_RELATIONS]
    new = [(name, rel, True, anchors) for name, rel, *anchors in NEW_RELATIONS]
    for name, rel, mirror, anchors in known + new:
        layout = AnchoredLayout(tuple((k, x, y) for k, (x, y) in zip(keys, anchors, strict=True)), mirror=mirror)
        lift = Goal("lift", "bowl_a")
        out.append(TabletopTask(_spec(f"pretrain/lift_red_bowl_{name}", lift, n, f"red bowl {rel}"),
                                SPATIAL_OBJECTS, lift, layout))
    for name, rel, mirror, anchors in new:
        layout = AnchoredLayout(tuple((k, x, y) for k, (x, y) in zip(keys, anchors, strict=True)), mirror=mirror)
        place = Goal("place_on", "bowl_a", "plate")
        spec = _spec(f"pretrain/red_bowl_{name}_on_plate", place, n, f"red bowl {rel}", "plate", relational=True)
        out.append(TabletopTask(spec, SPATIAL_OBJECTS, place, layout))
    return out


def _bystanders(actor, verb: str, scene: int) -> tuple:
    """The two other lane objects of one scene of (verb, actor), seeded by both; the plate when placing on it."""
    rng = np.random.default_rng((zlib.crc32(f"{verb}/{actor.name}".encode()), scene))
    # "the red bowl" beside the (blue) "bowl" would make the suite's own "the bowl" ambiguous
    pool = [k for k in BYSTANDERS if k.name != actor.name and not (actor is RED_BOWL and k is BLUE_BOWL)]
    first, second = (pool[i] for i in rng.choice(len(pool), size=2, replace=False))
    return (PLATE, first) if verb == "place_on" else (first, second)


def lane_pretrain_tasks(n: int) -> list[TabletopTask]:
    """Every (verb, object) of the lane scenes not taken by the suite, in ``SCENES_PER_TASK`` scenes each."""
    out = []
    for verb in VERBS:
        for actor in ACTORS:
            if _taken_by_the_suite(verb, actor.name):
                continue
            slug = actor.name.replace(" ", "_")
            target = {"place_in": "basket", "place_on": "plate"}.get(verb)
            goal = Goal(verb, "target", target)
            for scene in range(SCENES_PER_TASK):
                others = _bystanders(actor, verb, scene)
                objects = (SceneObject("basket", BASKET), SceneObject("target", actor),
                           *(SceneObject("plate" if k is PLATE else f"other_{i}", k) for i, k in enumerate(others)))
                layout = LaneLayout("basket", tuple(o.key for o in objects[1:]))
                spec = _spec(f"pretrain/{verb}_{slug}_s{scene}", goal, n, actor.name, target)
                out.append(TabletopTask(spec, objects, goal, layout))
    return out


def pretrain_tasks(n: int) -> list[TabletopTask]:
    """The whole pretraining catalogue, in a fixed order."""
    return spatial_pretrain_tasks(n) + lane_pretrain_tasks(n)


__all__ = ["NEW_RELATIONS", "PRETRAIN_SPLIT", "lane_pretrain_tasks", "pretrain_tasks", "spatial_pretrain_tasks"]
