"""Offscreen frames of LIBERO scenes: one GL context per env, one texture upload per task, fast settings.

A LIBERO scene holds ~190 MB of textures and ~0.3 M mesh faces. Every
simulator of the same task compiles the same model, so one ``MjrContext``
per task (uploaded once) draws all of them. With Mesa's EGL (software
rasterising on these CPU machines) what a frame costs is geometry and pixels:
measured on libero_spatial task 0 at 128 px (``benchmarks/env_speed.py``),
robosuite's settings take ~140 ms a frame, without shadows and reflections
~80 ms, without 4x MSAA ~45 ms, and without the invisible collision geoms
(robosuite's group 0) ~33 ms. The offscreen buffer is the frame's size.
"""
from __future__ import annotations

import mujoco
import numpy as np

from ..scene.render import FrameRenderer, gl_context_class, track_renderer

#: robosuite puts collision geoms in group 0 (visual meshes in group 1): never drawn
_COLLISION_GROUP = 0
_OFF = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX)


class LiberoRenderer(FrameRenderer):
    """Square RGB frames of LIBERO models, one GL context, one ``MjrContext`` per task key.

    Args:
        size: side of the square frames in pixels.
    """

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self._option.geomgroup[:] = 1
        self._option.geomgroup[_COLLISION_GROUP] = 0
        self._ctxs: dict[int, tuple[mujoco.MjrContext, mujoco.MjvScene]] = {}

    def _context(self, key: int, model: mujoco.MjModel) -> tuple[mujoco.MjrContext, mujoco.MjvScene]:
        pair = self._ctxs.get(key)
        if pair is None:
            if self._gl is None:
                self._gl = gl_context_class()(self.size, self.size)
                track_renderer(self)
            self._gl.make_current()
            # no MSAA, a frame-sized offscreen buffer (set before the context reads them)
            model.vis.quality.offsamples = 0
            model.vis.global_.offwidth = model.vis.global_.offheight = self.size
            scene = mujoco.MjvScene(model, maxgeom=2000)
            for flag in _OFF:
                scene.flags[flag] = 0
            pair = self._ctxs[key] = (mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50), scene)
        return pair

    def render_task(self, key: int, model: mujoco.MjModel, data: mujoco.MjData, camera: int,
                    out: np.ndarray) -> None:
        """Draw camera ``camera`` of ``(model, data)``, a model of task ``key``, into ``out`` (uint8 HWC)."""
        ctx, scene = self._context(key, model)
        self._gl.make_current()
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, ctx)
        self._camera.fixedcamid = camera
        mujoco.mjv_updateScene(model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL,
                               scene)
        mujoco.mjr_render(self._rect, scene, ctx)
        mujoco.mjr_readPixels(out, None, self._rect, ctx)
        out[:] = out[::-1]  # GL rows run bottom-up

    def forget(self, key: int) -> None:
        """Free one task's textures and meshes (its simulators are gone)."""
        pair = self._ctxs.pop(key, None)
        if pair is not None and self._gl is not None:
            self._gl.make_current()
            pair[0].free()

    def close(self) -> None:
        """Free every task's GL resources and the context (safe to call twice)."""
        ctxs, self._ctxs = self._ctxs, {}
        if self._gl is not None:
            try:
                self._gl.make_current()
                for ctx, _ in ctxs.values():
                    ctx.free()
            except Exception:  # at interpreter exit EGL may already be torn down
                pass
        super().close()

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])
