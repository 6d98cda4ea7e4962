"""The tabletop task catalogue: object kinds, seen and held-out tasks per family, their initial-state spreads.

Three LIBERO-like families, each with seen (``train``) and held-out tasks:

* **spatial** -- the same objects (two identical red bowls, a plate, a mug, a
  cookie box); the bowl to move is named by its relation to the others. Each
  task is a layout template that makes its relation true; unseen tasks use new
  relation/anchor compositions (``unseen_spatial``).
* **object** -- a basket and four groceries; the instruction names which one
  goes into the basket. Unseen tasks target new objects in new colours
  (``unseen_object``).
* **goal** -- one scene (bowl, plate, mug, basket), different goals; unseen
  tasks recombine seen verbs and objects (``unseen_goal``).

Initial states come in two spreads. ``"narrow"`` (the default, as in LIBERO,
where each task's BDDL file fixes the scene and only small placement regions
vary): every task has one canonical layout, drawn once from its layout sampler,
and initial state ``k`` moves each object by at most :data:`NARROW_JITTER` and
turns it by at most :data:`NARROW_YAW`. The goal family shares one canonical
scene across its tasks (LIBERO-Goal's "same scene, different goals"), so only
the instruction tells them apart. ``"wide"`` draws every initial state from the
full sampler: mirrored spatial scenes, groceries scattered over the table,
goal-scene lanes shuffled -- a harder generalisation test.

Initial state ``k`` of a task is drawn from ``numpy.random.default_rng((crc32(name), k))``
(the canonical layout from ``(crc32(scene), CANONICAL_STATE)``), so it is the same in every
process and never depends on the call order.
Everything here is plain frozen data, so a suite pickles into worker processes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from ..base import TRAIN_SPLIT, TaskSpec
from ..scene.mjcf import ObjectKind, SceneObject
from ..scene.tasks import Goal, SceneTask, init_state_rng
from .layouts import NARROW_JITTER, AnchoredLayout, LaneLayout, ScatterLayout, hand_start  # noqa: F401 (NARROW_JITTER re-exported)
from .phrasing import phrasings

# Goal verbs (vla_grpo.envs.scene.tasks.Goal; TabletopSim.success): ``place_on`` (obj resting on
# target), ``place_in`` (obj inside the target basket), ``push_front`` (obj centre pushed past
# FRONT_Y), ``lift`` (obj bottom above LIFT_HEIGHT).

#: an object's centre must end below this y for "push ... to the front"
FRONT_Y = -0.12
#: an object's bottom must rise above this z for "pick up ..."
LIFT_HEIGHT = 0.08
#: step limits (simulator control steps, 50 Hz); ~2x the scripted expert's longest episodes
MAX_STEPS = {"place_on": 220, "place_in": 220, "push_front": 120, "lift": 100}
#: ``"narrow"`` spread: largest turn (rad) of an object from its canonical yaw
NARROW_YAW = 0.15
#: the rng stream of a canonical layout (initial-state ids are far below it)
CANONICAL_STATE = 2**31 - 1
SPREADS = ("narrow", "wide")

# -- object kinds ----------------------------------------------------------
RED_BOWL = ObjectKind("red bowl", "bowl", (0.035, 0.035, 0.022), (0.85, 0.14, 0.12, 1))
BLUE_BOWL = ObjectKind("bowl", "bowl", (0.035, 0.035, 0.022), (0.2, 0.4, 0.88, 1))
PLATE = ObjectKind("plate", "plate", (0.065, 0.065, 0.008), (0.95, 0.95, 0.9, 1), graspable=False, mass=0.3)
MUG = ObjectKind("mug", "mug", (0.031, 0.031, 0.036), (0.2, 0.62, 0.32, 1))
COOKIE_BOX = ObjectKind("cookie box", "box", (0.034, 0.025, 0.03), (0.62, 0.36, 0.72, 1))
BASKET = ObjectKind("basket", "basket", (0.085, 0.085, 0.025), (0.72, 0.52, 0.28, 1), graspable=False)

SEEN_GROCERIES = (
    ObjectKind("cream cheese", "box", (0.03, 0.022, 0.018), (0.58, 0.78, 0.97, 1)),
    ObjectKind("ketchup", "bottle", (0.024, 0.024, 0.042), (0.86, 0.1, 0.08, 1)),
    ObjectKind("milk", "carton", (0.026, 0.026, 0.048), (0.97, 0.97, 0.97, 1)),
    ObjectKind("butter", "box", (0.032, 0.02, 0.014), (0.98, 0.86, 0.22, 1)),
    ObjectKind("orange juice", "carton", (0.026, 0.026, 0.044), (1.0, 0.55, 0.08, 1)),
    ObjectKind("salad dressing", "bottle", (0.022, 0.022, 0.042), (0.45, 0.75, 0.2, 1)),
)
UNSEEN_GROCERIES = (
    ObjectKind("chocolate pudding", "box", (0.03, 0.024, 0.02), (0.4, 0.22, 0.1, 1)),
    ObjectKind("alphabet soup", "can", (0.03, 0.03, 0.034), (0.1, 0.66, 0.66, 1)),
    ObjectKind("grape juice", "carton", (0.026, 0.026, 0.044), (0.5, 0.18, 0.66, 1)),
)


@dataclass(frozen=True)
class TabletopTask(SceneTask):
    """A tabletop task (``goal``: a :class:`Goal`, ``layout``: a ``Layout``) with its initial-state spread."""

    spread: str = "narrow"
    scene: str = ""  # tasks with the same scene share a canonical layout ("" = the task's own)
    origin: str = ""  # a reworded copy (the paraphrase split) shares this task's scene and initial states

    def init_layout(self, init_state_id: int) -> dict[str, tuple[float, ...]]:
        """The layout of initial state ``init_state_id`` (pure function of name and id)."""
        rng = init_state_rng(self.spec, init_state_id, self.origin or None)
        if self.spread == "wide":
            return self.layout.sample(rng)
        return self._jittered(self.canonical_layout(), rng, self.layout.narrow_jitter)

    def canonical_layout(self) -> dict[str, tuple[float, ...]]:
        """The ``"narrow"`` spread's fixed scene of this task (shared by tasks of one ``scene``)."""
        seed = zlib.crc32((self.scene or self.origin or self.spec.name).encode())
        return self.layout.sample(np.random.default_rng((seed, CANONICAL_STATE)))

    @staticmethod
    def _jittered(
        canonical: dict[str, tuple[float, ...]], rng: np.random.Generator, jitter: tuple[float, float]
    ) -> dict[str, tuple[float, ...]]:
        out: dict[str, tuple[float, ...]] = {}
        for key, (x, y, yaw) in canonical.items():
            if key == "hand":
                continue
            jx, jy = rng.uniform(-jitter[0], jitter[0]), rng.uniform(-jitter[1], jitter[1])
            turn = 0.0 if yaw == 0.0 else rng.uniform(-NARROW_YAW, NARROW_YAW)  # the basket stays square
            out[key] = (float(x + jx), float(y + jy), float(yaw + turn))
        out["hand"] = hand_start(rng)
        return out


# -- the catalogue ---------------------------------------------------------
def _spec(name: str, split: str, goal: Goal, n: int, obj: str, target: str | None = None,
          relational: bool = False) -> TaskSpec:
    """A task's spec, asked as ``goal.verb`` of ``obj`` (onto/into ``target``): its first phrasing is the instruction."""
    family = name.split("/")[0]
    train, held_out = phrasings(goal.verb, obj, target, relational)
    return TaskSpec(name, train[0], split, family, MAX_STEPS[goal.verb], n, train, held_out)


SPATIAL_OBJECTS = (
    SceneObject("bowl_a", RED_BOWL), SceneObject("bowl_b", RED_BOWL), SceneObject("plate", PLATE),
    SceneObject("mug", MUG), SceneObject("cookie_box", COOKIE_BOX),
)
# (name, relation phrase, split, mirror?, anchors of bowl_a (target), bowl_b, plate, mug, cookie_box)
SPATIAL_RELATIONS = (
    ("between_plate_mug", "between the plate and the mug", TRAIN_SPLIT, True,
     (0.0, 0.04), (0.05, -0.13), (-0.17, 0.04), (0.165, 0.04), (-0.16, -0.13)),
    ("next_to_cookie_box", "next to the cookie box", TRAIN_SPLIT, True,
     (0.04, -0.1), (-0.2, -0.11), (-0.14, 0.07), (0.1, 0.12), (0.18, -0.1)),
    ("in_front_of_mug", "in front of the mug", TRAIN_SPLIT, True,
     (0.1, -0.02), (-0.06, 0.12), (-0.16, -0.04), (0.1, 0.12), (-0.22, 0.12)),
    ("behind_plate", "behind the plate", TRAIN_SPLIT, True,
     (0.0, 0.06), (0.19, -0.08), (0.0, -0.1), (-0.17, 0.07), (-0.17, -0.12)),
    ("left_side", "on the left side of the table", TRAIN_SPLIT, False,
     (-0.22, 0.0), (0.22, 0.0), (0.0, -0.09), (0.0, 0.1), (0.14, -0.15)),
    ("next_to_plate", "next to the plate", TRAIN_SPLIT, True,
     (0.02, 0.03), (0.2, -0.11), (-0.13, 0.03), (0.18, 0.11), (-0.15, -0.13)),
    ("between_cookie_box_mug", "between the cookie box and the mug", "unseen_spatial", True,
     (0.0, 0.05), (-0.17, -0.12), (0.02, -0.12), (0.165, 0.05), (-0.165, 0.05)),
    ("behind_mug", "behind the mug", "unseen_spatial", True,
     (0.0, 0.07), (0.19, -0.07), (-0.17, 0.05), (0.0, -0.08), (0.17, 0.12)),
    ("right_side", "on the right side of the table", "unseen_spatial", False,
     (0.22, 0.0), (-0.22, 0.0), (0.0, 0.09), (0.0, -0.1), (-0.14, -0.15)),
)


def spatial_tasks(n: int) -> list[TabletopTask]:
    """Spatial family: pick the red bowl named by a relation, place it on the plate."""
    goal = Goal("place_on", "bowl_a", "plate")
    keys = [o.key for o in SPATIAL_OBJECTS]
    out = []
    for name, rel, split, mirror, *anchors in SPATIAL_RELATIONS:
        layout = AnchoredLayout(tuple((k, x, y) for k, (x, y) in zip(keys, anchors, strict=True)), mirror=mirror)
        spec = _spec(f"spatial/{name}", split, goal, n, f"red bowl {rel}", "plate", relational=True)
        out.append(TabletopTask(spec, SPATIAL_OBJECTS, goal, layout))
    return out


def _object_task(target: ObjectKind, distractors: tuple[ObjectKind, ...], split: str, n: int) -> TabletopTask:
    objects = (SceneObject("basket", BASKET), SceneObject("target", target)) + tuple(
        SceneObject(f"distractor_{i}", k) for i, k in enumerate(distractors)
    )
    layout = ScatterLayout("basket", tuple((o.key, o.kind.footprint) for o in objects[1:]))
    goal = Goal("place_in", "target", "basket")
    name = "object/" + target.name.replace(" ", "_")
    return TabletopTask(_spec(name, split, goal, n, target.name, "basket"), objects, goal, layout)


def object_tasks(n: int) -> list[TabletopTask]:
    """Object family: which grocery goes into the basket (3 seen distractors each)."""
    seen = SEEN_GROCERIES
    out = [
        _object_task(k, tuple(seen[(i + j) % len(seen)] for j in (1, 2, 3)), TRAIN_SPLIT, n)
        for i, k in enumerate(seen)
    ]
    picks = ((0, 2, 4), (1, 3, 5), (0, 3, 5))
    out += [
        _object_task(k, tuple(seen[j] for j in p), "unseen_object", n)
        for k, p in zip(UNSEEN_GROCERIES, picks, strict=True)
    ]
    return out


_GOAL_OBJECTS = (
    SceneObject("basket", BASKET), SceneObject("bowl", BLUE_BOWL), SceneObject("plate", PLATE),
    SceneObject("mug", MUG),
)
_GOALS = (
    ("bowl_on_plate", TRAIN_SPLIT, Goal("place_on", "bowl", "plate")),
    ("push_plate_front", TRAIN_SPLIT, Goal("push_front", "plate")),
    ("mug_in_basket", TRAIN_SPLIT, Goal("place_in", "mug", "basket")),
    ("bowl_in_basket", TRAIN_SPLIT, Goal("place_in", "bowl", "basket")),
    ("mug_on_plate", TRAIN_SPLIT, Goal("place_on", "mug", "plate")),
    ("lift_mug", TRAIN_SPLIT, Goal("lift", "mug")),
    ("push_bowl_front", "unseen_goal", Goal("push_front", "bowl")),
    ("lift_bowl", "unseen_goal", Goal("lift", "bowl")),
    ("push_mug_front", "unseen_goal", Goal("push_front", "mug")),
)


def goal_tasks(n: int) -> list[TabletopTask]:
    """Goal family: one scene, different goals."""
    layout = LaneLayout("basket", ("bowl", "plate", "mug"))
    names = {o.key: o.kind.name for o in _GOAL_OBJECTS}
    return [
        TabletopTask(_spec(f"goal/{name}", split, goal, n, names[goal.obj], names.get(goal.target)),
                     _GOAL_OBJECTS, goal, layout, scene="goal")
        for name, split, goal in _GOALS
    ]


PARAPHRASE_SPLIT = "paraphrase"


def paraphrase_tasks(seen: list[TabletopTask]) -> list[TabletopTask]:
    """The seen tasks asked with their held-out rewordings (same scenes, same initial states)."""
    return [
        replace(t, spec=replace(t.spec, name=f"{PARAPHRASE_SPLIT}/{t.spec.name}", split=PARAPHRASE_SPLIT,
                                instruction=t.spec.held_out_phrasings[0], phrasings=t.spec.held_out_phrasings,
                                held_out_phrasings=()),
                origin=t.spec.name)
        for t in seen
    ]


def build_catalogue(
    num_init_states: int = 50, spread: str = "narrow", seen_per_family: int | None = None,
) -> list[TabletopTask]:
    """All tasks in ``task_index`` order: seen tasks of each family, the unseen splits, ``paraphrase``.

    (The suite adds the ``pretrain`` split of :mod:`.catalogue` after them.)

    ``seen_per_family`` keeps only the first that many seen tasks of each family
    (the unseen splits stay whole; ``paraphrase`` follows the seen tasks).
    """
    if spread not in SPREADS:
        raise ValueError(f"`spread` must be one of {SPREADS} (got {spread!r})")
    families = [spatial_tasks(num_init_states), object_tasks(num_init_states), goal_tasks(num_init_states)]
    if seen_per_family is not None:
        families = [[t for t in fam if t.spec.split == TRAIN_SPLIT][:seen_per_family]
                    + [t for t in fam if t.spec.split != TRAIN_SPLIT] for fam in families]
    tasks = [replace(t, spread=spread) for fam in families for t in fam]
    seen = [t for t in tasks if t.spec.split == TRAIN_SPLIT]
    return seen + [t for t in tasks if t.spec.split != TRAIN_SPLIT] + paraphrase_tasks(seen)
