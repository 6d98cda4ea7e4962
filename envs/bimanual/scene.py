"""Objects and MJCF of the bimanual scenes: the kit's table, camera and hand, the hand twice.

The table, camera, lighting and the servoed two-finger hand are the scene
kit's (:func:`vla_grpo.envs.scene.mjcf.scene_mjcf`,
:func:`~vla_grpo.envs.scene.mjcf.hand_xml`), the hand instanced twice with the
name prefixes ``left_`` and ``right_``; ordinary objects are the kit's
:class:`ObjectKind` bodies. Two kinds are new: a **pot** (round body, two
upright handle tabs on its left and right rims, one per hand) and a
**hammer** (a handle along ``y`` and a head at its far end).

Each graspable kind lists its *grasp parts* (:func:`grasp_parts`): the
regions the tool centre must be over for a grasp to hold -- the whole body
for ordinary objects, a handle for the pot and the hammer.
"""
from __future__ import annotations

from ..scene.mjcf import (
    ObjectKind,
    SceneObject,
    geom_xml,
    hand_xml,
    object_body,
    rgba_text,
    scene_mjcf,
)

ARMS = ("left", "right")
#: hand body colours, so the two arms read apart in a 64-px frame
HAND_RGBA = {"left": "0.2 0.3 0.6 1", "right": "0.6 0.25 0.2 1"}

#: pot: visual radius; handle tabs (half extents) stand outside the rim at +-POT_HANDLE_X
POT_RADIUS = 0.065
POT_HANDLE_HALF = (0.006, 0.022, 0.02)
POT_HANDLE_X = POT_RADIUS + POT_HANDLE_HALF[0]
#: hammer parts, in the body frame (origin at the head's centre height): (centre, half extents)
HAMMER_HANDLE = ((0.0, -0.02, -0.008), (0.011, 0.05, 0.012))
HAMMER_HEAD = ((0.0, 0.045, 0.0), (0.035, 0.014, 0.02))


def pot_handle_z(kind: ObjectKind) -> float:
    """Height of the handle tabs' centre above the pot's centre."""
    return kind.half[2] - 0.01 + POT_HANDLE_HALF[2]


def _free_body(key: str, geoms: list[str]) -> str:
    body = "\n".join(geoms)
    return f'<body name="{key}">\n<freejoint name="{key}"/>\n{body}\n</body>'


def _pot_body(obj: SceneObject) -> str:
    k = obj.kind
    hx, hy, hz = k.half
    main, dark = rgba_text(k.rgba), rgba_text(k.rgba, 0.55)
    geoms = [  # an octagonal prism collides, a cylinder is drawn (as the kit's round objects)
        geom_xml("box", (hx, hy, hz), "0 0 0 0", cls="col", extra=f'mass="{k.mass / 2}"'),
        geom_xml("box", (hx, hy, hz), "0 0 0 0", cls="col",
              extra=f'mass="{k.mass / 2}" euler="0 0 0.7854" contype="2" conaffinity="2"'),
        geom_xml("cylinder", (POT_RADIUS, hz), main),
        geom_xml("cylinder", (0.85 * POT_RADIUS, 0.0015), dark, (0, 0, hz)),
    ]
    z = pot_handle_z(k)
    for sx in (-1, 1):
        geoms.append(geom_xml("box", POT_HANDLE_HALF, dark, (sx * POT_HANDLE_X, 0, z), cls="solid", extra='mass="0.02"'))
    return _free_body(obj.key, geoms)


def _hammer_body(obj: SceneObject) -> str:
    k = obj.kind
    (hp, hh), (dp, dh) = HAMMER_HANDLE, HAMMER_HEAD
    geoms = [
        geom_xml("box", hh, rgba_text(k.rgba), hp, cls="solid", extra='mass="0.08"'),
        geom_xml("box", dh, rgba_text((0.3, 0.3, 0.33, 1)), dp, cls="solid", extra='mass="0.15"'),
    ]
    return _free_body(obj.key, geoms)


def body_xml(obj: SceneObject) -> str:
    """MJCF ``<body>`` of one object (the kit's kinds, plus ``pot`` and ``hammer``)."""
    if obj.kind.shape == "pot":
        return _pot_body(obj)
    if obj.kind.shape == "hammer":
        return _hammer_body(obj)
    return object_body(obj)


def grasp_parts(kind: ObjectKind) -> tuple[tuple[tuple[float, float], tuple[float, float]], ...]:
    """``((centre_xy, half_xy), ...)`` in the body frame: where the tool centre may grasp ``kind``."""
    if kind.shape == "pot":
        return tuple(((sx * POT_HANDLE_X, 0.0), POT_HANDLE_HALF[:2]) for sx in (-1, 1))
    if kind.shape == "hammer":
        return ((HAMMER_HANDLE[0][:2], HAMMER_HANDLE[1][:2]),)
    return (((0.0, 0.0), kind.collision_half[:2]),)


def build_mjcf(objects: tuple[SceneObject, ...], *, offscreen: int = 128) -> str:
    """MJCF text of a bimanual scene: table, camera, left and right hands, objects."""
    hands = tuple(hand_xml(f"{arm}_", HAND_RGBA[arm]) for arm in ARMS)
    return scene_mjcf("\n".join(body_xml(o) for o in objects), hands, offscreen=offscreen, model="bimanual")
