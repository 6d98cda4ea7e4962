"""The tabletop scene's MJCF: the kit's table and camera, one hand, the task's objects."""
from __future__ import annotations

from ..scene.mjcf import SceneObject, hand_xml, object_body, scene_mjcf


def build_mjcf(objects: tuple[SceneObject, ...], *, offscreen: int = 128) -> str:
    """MJCF text of a tabletop scene: table, one hand with two fingers, cameras, objects.

    Args:
        objects: the scene's objects (bodies are named by their keys).
        offscreen: offscreen framebuffer side; must be >= the rendered image size.
    """
    return scene_mjcf("\n".join(object_body(o) for o in objects), (hand_xml(),), offscreen=offscreen)
