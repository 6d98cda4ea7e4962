"""The MJCF parts every scene suite builds from: object kinds, object bodies, the servoed hand, the table.

Everything is built from MuJoCo primitives (boxes and cylinders) in distinct
flat colours: no meshes, no textures, no shadows, no reflections, so that a
128-px frame costs well under a millisecond with software EGL, and so that
every compiled scene shares one GL context (an ``MjrContext`` only holds
textures/meshes/fonts, and the scenes have none of the first two).

Round objects (bowls, plates, mugs, cans, bottles) are drawn as cylinders but
collide as octagonal prisms made of two boxes: box-box and box-plane contacts
are analytic and multi-point, so a bowl rests flat on a plate instead of
rocking on a single ccd contact, and a pusher meets a roughly round rim.
Collision-only geoms sit in geom group 3, which the renderer hides.

Frame: the table top is ``z = 0``; the agent-view camera looks along ``+y``, so
"front" is ``-y`` (towards the camera) and "left" is ``-x``.
"""
from __future__ import annotations

from dataclasses import dataclass

#: half extents of the table top (x, y); the top surface is z = 0
TABLE_HALF = (0.38, 0.30)
#: finger slide range: 0 = open (inner faces 9.2 cm apart), FINGER_CLOSED = touching
FINGER_OPEN_X = 0.052
FINGER_HALF = (0.006, 0.012, 0.025)
FINGER_CLOSED = FINGER_OPEN_X - FINGER_HALF[0]
#: basket geometry: inner half width, wall half thickness, wall height
BASKET_INNER = 0.075
BASKET_WALL = 0.005
BASKET_HEIGHT = 0.05
#: physics step: two 10 ms substeps make one 50 Hz control step (see sim.SUBSTEPS)
TIMESTEP = 0.01
HAND_START_Z = 0.2
HAND_MASS = 2.0
HAND_KP = 8000.0
#: critical damping of the hand servo: 2 * sqrt(kp * m)
HAND_KV = 2.0 * (HAND_KP * HAND_MASS) ** 0.5


@dataclass(frozen=True)
class ObjectKind:
    """A kind of object that can be placed in a scene.

    Attributes:
        name: the phrase instructions use ("red bowl", "cream cheese").
        shape: ``box``, ``carton``, ``bowl``, ``plate``, ``mug``, ``can``,
            ``bottle`` or ``basket``.
        half: collision half extents (x, y, z); round shapes use x as radius.
        rgba: main colour.
        graspable: whether the gripper may pick it up.
        mass: kg.
    """

    name: str
    shape: str
    half: tuple[float, float, float]
    rgba: tuple[float, float, float, float]
    graspable: bool = True
    mass: float = 0.15

    @property
    def round(self) -> bool:
        return self.shape in ("bowl", "plate", "mug", "can", "bottle")

    @property
    def collision_half(self) -> tuple[float, float, float]:
        """Half extents of the collision box (round shapes are inset a little)."""
        if self.shape == "basket":
            outer = BASKET_INNER + 2 * BASKET_WALL
            return (outer, outer, BASKET_HEIGHT / 2)
        if self.round:
            r, _, h = self.half
            return (0.9 * r, 0.9 * r, h)  # octagon: inscribed 0.9 r, circumscribed 0.97 r
        return self.half

    @property
    def footprint(self) -> float:
        """Radius of a circle around the object in the table plane (for spacing)."""
        hx, hy, _ = self.collision_half
        if self.shape == "mug":
            return self.half[0] + 0.012  # the handle sticks out
        if self.round:
            return self.half[0]
        return (hx * hx + hy * hy) ** 0.5


@dataclass(frozen=True)
class SceneObject:
    """One object instance of a scene: a unique key and its kind."""

    key: str
    kind: ObjectKind


def rgba_text(c: tuple[float, ...], scale: float = 1.0) -> str:
    """An MJCF ``rgba`` attribute of colour ``c`` with its RGB scaled by ``scale`` (capped at 1)."""
    return " ".join(f"{min(1.0, v * scale):.3f}" for v in c[:3]) + f" {c[3]:.3f}"


def geom_xml(kind: str, size: tuple[float, ...], rgba: str, pos=(0.0, 0.0, 0.0), cls: str = "vis", extra: str = "") -> str:
    """One MJCF ``<geom>`` of type ``kind`` in default class ``cls`` (``vis``, ``col`` or ``solid``)."""
    s = " ".join(f"{v:.4f}" for v in size)
    p = " ".join(f"{v:.4f}" for v in pos)
    return f'<geom class="{cls}" type="{kind}" size="{s}" pos="{p}" rgba="{rgba}" {extra}/>'


def _round_visuals(k: ObjectKind) -> list[str]:
    r, _, h = k.half
    main, dark, light = rgba_text(k.rgba), rgba_text(k.rgba, 0.6), rgba_text(k.rgba, 1.25)
    out = [geom_xml("cylinder", (r, h), main)]
    if k.shape in ("bowl", "mug"):
        # a darker disc on top reads as the hollow inside at 128 px
        out.append(geom_xml("cylinder", (0.78 * r, 0.0015), dark, (0, 0, h)))
    if k.shape == "plate":
        out.append(geom_xml("cylinder", (0.72 * r, 0.001), light, (0, 0, h)))
    if k.shape == "mug":
        out.append(geom_xml("box", (0.008, 0.004, 0.6 * h), main, (0.7 * (r + 0.006), -0.7 * (r + 0.006), 0), extra='euler="0 0 0.785"'))
    if k.shape == "can":
        out.append(geom_xml("cylinder", (0.92 * r, 0.002), light, (0, 0, h)))
    if k.shape == "bottle":
        out.append(geom_xml("cylinder", (0.45 * r, 0.25 * h), main, (0, 0, 1.25 * h)))
        out.append(geom_xml("cylinder", (0.5 * r, 0.006), rgba_text((0.15, 0.15, 0.15, 1)), (0, 0, 1.5 * h)))
    return out


def _basket_geoms(k: ObjectKind) -> list[str]:
    c, t, hh = rgba_text(k.rgba), BASKET_WALL, BASKET_HEIGHT / 2
    off = BASKET_INNER + t
    out = [geom_xml("box", (off + t, off + t, t), rgba_text(k.rgba, 0.8), (0, 0, t), cls="solid")]
    for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        size = (t, off + t, hh) if sx else (off + t, t, hh)
        out.append(geom_xml("box", size, c, (sx * off, sy * off, hh), cls="solid"))
    return out


def object_body(obj: SceneObject) -> str:
    """MJCF ``<body>`` of one object (a free body, or a mocap body for the basket)."""
    k = obj.kind
    if k.shape == "basket":
        # kinematic fixture: placed per initial state through mocap_pos
        geoms = "\n".join(_basket_geoms(k))
        return f'<body name="{obj.key}" mocap="true">\n{geoms}\n</body>'
    hx, hy, hz = k.collision_half
    if k.round:
        # an octagonal prism (two boxes, 45 degrees apart) stands in for the cylinder
        # The 45-degree box skips the table (contype/conaffinity bit 2 only):
        # the table contacts of one box hold the object up, and half the
        # contacts is a good part of the physics cost.
        col = [
            geom_xml("box", (hx, hy, hz), "0 0 0 0", cls="col", extra=f'mass="{k.mass / 2}"'),
            geom_xml("box", (hx, hy, hz), "0 0 0 0", cls="col",
                  extra=f'mass="{k.mass / 2}" euler="0 0 0.7854" contype="2" conaffinity="2"'),
        ]
        geoms = [*col, *_round_visuals(k)]
    else:
        geoms = [geom_xml("box", k.half, rgba_text(k.rgba), cls="solid", extra=f'mass="{k.mass}"')]
        if k.shape == "carton":
            geoms.append(geom_xml("box", (0.6 * hx, 0.6 * hy, 0.006), rgba_text(k.rgba, 0.7), (0, 0, hz + 0.006)))
    body = "\n".join(geoms)
    return f'<body name="{obj.key}">\n<freejoint name="{obj.key}"/>\n{body}\n</body>'


_HAND = """
<body name="{p}hand" gravcomp="1">
  <joint name="{p}hand_x" type="slide" axis="1 0 0" range="-0.35 0.35"/>
  <joint name="{p}hand_y" type="slide" axis="0 1 0" range="-0.3 0.3"/>
  <joint name="{p}hand_z" type="slide" axis="0 0 1" range="0 0.4"/>
  <inertial pos="0 0 0.06" mass="{hand_mass}" diaginertia="0.01 0.01 0.01"/>
  <camera name="{p}wrist" pos="0 -0.045 0.11" xyaxes="1 0 0 0 0.94 0.34" fovy="75"/>
  <geom class="vis" type="box" pos="0 0 0.058" size="0.066 0.016 0.008" rgba="{body_rgba}"/>
  <geom class="vis" type="cylinder" pos="0 0 0.085" size="0.022 0.02" rgba="0.35 0.35 0.4 1"/>
  <geom class="vis" type="cylinder" pos="0 0 0.45" size="0.016 0.35" rgba="0.55 0.55 0.6 1"/>
  <body name="{p}finger_l" pos="-{fx} 0 {fz}" gravcomp="1">
    <joint name="{p}finger_l" type="slide" axis="1 0 0" range="0 {closed}" damping="6"/>
    <geom name="{p}finger_l" class="solid" type="box" size="{fsize}" mass="0.05" rgba="0.15 0.15 0.18 1"/>
  </body>
  <body name="{p}finger_r" pos="{fx} 0 {fz}" gravcomp="1">
    <joint name="{p}finger_r" type="slide" axis="-1 0 0" range="0 {closed}" damping="6"/>
    <geom name="{p}finger_r" class="solid" type="box" size="{fsize}" mass="0.05" rgba="0.15 0.15 0.18 1"/>
  </body>
</body>"""

# The hand is servoed, not teleported: a teleported (mocap) body has no velocity
# in the contact solver, so at speed it tunnels through thin objects instead of
# pushing them. Per axis, a stiff position servo plus a velocity servo fed the
# commanded velocity track a moving target without lag.
_HAND_ACTUATORS = """
  <position name="{p}hand_x" joint="{p}hand_x" kp="{kp}"/>
  <position name="{p}hand_y" joint="{p}hand_y" kp="{kp}"/>
  <position name="{p}hand_z" joint="{p}hand_z" kp="{kp}"/>
  <velocity name="{p}hand_vx" joint="{p}hand_x" kv="{kv}"/>
  <velocity name="{p}hand_vy" joint="{p}hand_y" kv="{kv}"/>
  <velocity name="{p}hand_vz" joint="{p}hand_z" kv="{kv}"/>
  <position name="{p}finger_l" joint="{p}finger_l" kp="200" forcerange="-6 6" ctrlrange="0 {closed}"/>
  <position name="{p}finger_r" joint="{p}finger_r" kp="200" forcerange="-6 6" ctrlrange="0 {closed}"/>"""

HAND_RGBA = "0.25 0.25 0.3 1"


def hand_xml(prefix: str = "", body_rgba: str = HAND_RGBA) -> tuple[str, str, str]:
    """MJCF of one servoed two-finger hand: ``(body, actuators, contact excludes)``.

    Every name (bodies, joints, actuators, the ``wrist`` camera) starts with
    ``prefix``, so a scene can hold several hands (``"left_"``, ``"right_"``).
    Actuators come in the order x, y, z position, x, y, z velocity, two fingers.
    """
    f = FINGER_HALF
    body = _HAND.format(p=prefix, hand_mass=HAND_MASS, fx=FINGER_OPEN_X, fz=f[2], closed=FINGER_CLOSED,
                        fsize=f"{f[0]} {f[1]} {f[2]}", body_rgba=body_rgba)
    actuators = _HAND_ACTUATORS.format(p=prefix, kp=HAND_KP, kv=HAND_KV, closed=FINGER_CLOSED)
    exclude = f'<exclude body1="{prefix}finger_l" body2="{prefix}finger_r"/>'
    return body, actuators, exclude


_TEMPLATE = """<mujoco model="{model}">
<compiler angle="radian" autolimits="true"/>
<option timestep="{timestep}" integrator="implicitfast"/>
<visual>
  <global offwidth="{offscreen}" offheight="{offscreen}"/>
  <quality shadowsize="0" offsamples="0" numslices="16" numstacks="2"/>
  <headlight ambient="0.42 0.42 0.42" diffuse="0.55 0.55 0.55" specular="0 0 0"/>
  <map znear="0.02" zfar="10"/>
</visual>
<default>
  <geom friction="1 0.005 0.0001" contype="3" conaffinity="3"/>
  <default class="vis"><geom contype="0" conaffinity="0" group="1" mass="0"/></default>
  <default class="col"><geom group="3"/></default>
  <default class="solid"><geom group="0"/></default>
</default>
<worldbody>
  <camera name="agentview" pos="0 -0.5 0.58" xyaxes="1 0 0 0 0.738 0.675" fovy="47"/>
  <light directional="true" pos="0 -0.3 1.5" dir="0 0.35 -1" diffuse="0.35 0.35 0.35" specular="0 0 0" castshadow="false"/>
  <geom name="table" class="solid" type="box" pos="0 0 -0.03" size="{tx} {ty} 0.03" rgba="0.6 0.52 0.44 1" contype="1" conaffinity="1"/>
  <geom class="vis" type="box" pos="0 0 -0.065" size="{tx} {ty} 0.005" rgba="0.4 0.34 0.28 1"/>
  <geom class="vis" type="box" pos="0 0.75 0.3" size="1.5 0.01 0.9" rgba="0.33 0.36 0.4 1"/>
  <geom name="floor" class="col" type="plane" pos="0 0 -0.75" size="3 3 0.1" rgba="0 0 0 0" contype="1" conaffinity="1"/>
{hand}
{objects}
</worldbody>
<actuator>{hand_actuators}
</actuator>
<contact>{exclude}</contact>
</mujoco>
"""


def scene_mjcf(objects: str, hands: tuple[tuple[str, str, str], ...], *, offscreen: int = 128,
               model: str = "tabletop") -> str:
    """MJCF text of a scene: table, cameras, the given hands (:func:`hand_xml`) and object bodies."""
    return _TEMPLATE.format(
        model=model, timestep=TIMESTEP, offscreen=max(int(offscreen), 64), tx=TABLE_HALF[0], ty=TABLE_HALF[1],
        hand="\n".join(h[0] for h in hands), objects=objects,
        hand_actuators="".join(h[1] for h in hands), exclude="".join(h[2] for h in hands),
    )

