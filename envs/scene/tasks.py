"""The task types of the scene suites: a task's spec, objects, goal and layout, and its seeded initial states.

Initial state ``k`` of a task is drawn from
``numpy.random.default_rng((crc32(name), k))`` (:func:`init_state_rng`), so it
is the same in every process and never depends on the call order. Everything
here is plain frozen data, so a suite pickles into worker processes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import TaskSpec
from .mjcf import ObjectKind, SceneObject


@dataclass(frozen=True)
class Goal:
    """What must become true: ``verb`` applied to object ``obj`` (and ``target``).

    The verbs are the suite's own: its simulator's ``success`` says what each
    one means (its ``tasks`` module lists them).
    """

    verb: str
    obj: str
    target: str | None = None


def init_state_rng(spec: TaskSpec, init_state_id: int, name: str | None = None) -> np.random.Generator:
    """The generator of a task's initial state: seeded by ``(crc32(name), id)``, the id range-checked.

    ``name``: the task whose states these are (a reworded copy shares its origin's); default ``spec.name``.
    """
    if not 0 <= init_state_id < spec.num_init_states:
        raise ValueError(
            f"init_state_id {init_state_id} is out of range for task {spec.name!r}; "
            f"expected 0 <= id < {spec.num_init_states}"
        )
    return np.random.default_rng((zlib.crc32((name or spec.name).encode()), int(init_state_id)))


@dataclass(frozen=True)
class SceneTask:
    """A task of a scene suite: its public :class:`TaskSpec`, scene objects, goal and layout sampler.

    ``goal`` is a :class:`Goal` and ``layout`` the suite's own type;
    ``layout.sample(rng)`` gives an initial layout.
    """

    spec: TaskSpec
    objects: tuple[SceneObject, ...]
    goal: Any
    layout: Any

    def kind(self, key: str) -> ObjectKind:
        """The kind of the task's object ``key``."""
        for obj in self.objects:
            if obj.key == key:
                return obj.kind
        raise KeyError(f"task {self.spec.name!r} has no object {key!r}")

    def init_layout(self, init_state_id: int) -> dict[str, tuple[float, ...]]:
        """The layout of initial state ``init_state_id`` (pure function of name and id)."""
        return self.layout.sample(init_state_rng(self.spec, init_state_id))
