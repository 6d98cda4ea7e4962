"""Seeded initial-state layouts of the tabletop scenes: where each object (and the hand) starts.

A layout's ``sample(rng)`` gives ``{key: (x, y, yaw)}`` plus the hand's start;
tasks draw their canonical scene and their initial states from it
(:mod:`.tasks`). Plain frozen data, so a suite pickles into worker processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scene.mjcf import BASKET_INNER, BASKET_WALL, HAND_START_Z

#: ``"narrow"`` spread: largest move (m, along x and along y) of an object from its canonical place
#: (a layout's ``narrow_jitter`` can be smaller: the goal scene's lanes leave 4 cm between objects)
NARROW_JITTER = 0.015


def _yaw(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-0.25, 0.25, n)


def hand_start(rng: np.random.Generator) -> tuple[float, float, float]:
    # the hand starts behind the objects, so that it hides none of them from the camera
    x, y = rng.uniform(-0.03, 0.03), rng.uniform(0.19, 0.22)
    return (float(x), float(y), float(HAND_START_Z + rng.uniform(-0.02, 0.02)))


@dataclass(frozen=True)
class AnchoredLayout:
    """Objects jittered around anchor points; optional left-right mirroring.

    The anchors make the task's spatial relation true; jitter and a global
    shift keep it true while varying the scene. Mirroring is allowed when the
    relation has no left/right in it.
    """

    anchors: tuple[tuple[str, float, float], ...]
    mirror: bool = True
    jitter: float = 0.012
    shift: float = 0.025
    narrow_jitter: tuple[float, float] = (NARROW_JITTER, NARROW_JITTER)

    def sample(self, rng: np.random.Generator) -> dict[str, tuple[float, ...]]:
        sign = -1.0 if (self.mirror and rng.random() < 0.5) else 1.0
        dx, dy = rng.uniform(-self.shift, self.shift, 2)
        yaw = _yaw(rng, len(self.anchors))
        out: dict[str, tuple[float, ...]] = {}
        for (key, x, y), a in zip(self.anchors, yaw, strict=True):
            jx, jy = rng.uniform(-self.jitter, self.jitter, 2)
            out[key] = (sign * x + dx + jx, y + dy + jy, float(a))
        out["hand"] = hand_start(rng)
        return out


@dataclass(frozen=True)
class ScatterLayout:
    """A basket on a random side, the other objects scattered with spacing.

    Rejection sampling keeps every pair at least ``gap`` apart beyond their
    footprints, far enough for open fingers to come down beside any object.
    """

    basket: str
    items: tuple[tuple[str, float], ...]  # (key, footprint radius)
    gap: float = 0.05
    narrow_jitter: tuple[float, float] = (NARROW_JITTER, NARROW_JITTER)

    def sample(self, rng: np.random.Generator) -> dict[str, tuple[float, ...]]:
        side = 1.0 if rng.random() < 0.5 else -1.0
        basket_r = BASKET_INNER + 2 * BASKET_WALL
        placed = [(side * rng.uniform(0.17, 0.2), rng.uniform(0.0, 0.09), basket_r)]
        out: dict[str, tuple[float, ...]] = {self.basket: (placed[0][0], placed[0][1], 0.0)}
        for key, radius in self.items:
            for _ in range(1000):
                x, y = rng.uniform(-0.25, 0.25), rng.uniform(-0.16, 0.13)
                if all(np.hypot(x - px, y - py) >= radius + pr + self.gap for px, py, pr in placed):
                    break
            else:  # pragma: no cover - the region is far from full
                raise RuntimeError(f"could not place {key!r} without overlap")
            placed.append((x, y, radius))
            out[key] = (float(x), float(y), float(_yaw(rng, 1)[0]))
        out["hand"] = hand_start(rng)
        return out


@dataclass(frozen=True)
class LaneLayout:
    """The goal scene: a basket at one side, three objects shuffled over three lanes.

    One object per lane leaves the space behind each object free, so it can be
    pushed to the front, and keeps the front strip (y < -0.06) empty.
    """

    basket: str
    items: tuple[str, str, str]
    narrow_jitter: tuple[float, float] = (0.006, NARROW_JITTER)  # along x, objects keep to their lanes

    def sample(self, rng: np.random.Generator) -> dict[str, tuple[float, ...]]:
        side = 1.0 if rng.random() < 0.5 else -1.0
        out: dict[str, tuple[float, ...]] = {
            self.basket: (side * rng.uniform(0.205, 0.215), rng.uniform(0.02, 0.08), 0.0)
        }
        lanes = (-side * 0.235, -side * 0.1, side * 0.035)
        order = rng.permutation(3)
        yaw = _yaw(rng, 3)
        for lane, i in zip(lanes, order, strict=True):
            x = lane + rng.uniform(-0.006, 0.006)
            out[self.items[i]] = (float(x), float(rng.uniform(-0.04, 0.07)), float(yaw[i]))
        out["hand"] = hand_start(rng)
        return out


Layout = AnchoredLayout | ScatterLayout | LaneLayout
