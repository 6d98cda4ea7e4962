"""One offscreen GL renderer per env, shared by every sub-env and task model.

``mujoco.Renderer`` binds its GL context to one model. Our scenes have no
textures or meshes, so one ``MjrContext`` (textures, meshes, fonts) serves
every compiled scene, and a single GL context can draw all sub-envs whatever
their task. The context is created lazily, at the first frame, so that an env
built in a parent process (e.g. by ``ParallelEnv`` to read specs) never opens
one, and each worker process opens its own.
"""
from __future__ import annotations

import atexit
import os
import weakref

os.environ.setdefault("MUJOCO_GL", "egl")  # headless by default (see gl_context_class)

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

_OPEN: weakref.WeakSet[FrameRenderer] = weakref.WeakSet()
_EXIT_HOOK = []


def gl_context_class() -> type:
    """The GL context class for ``MUJOCO_GL`` (EGL unless the user chose otherwise).

    ``mujoco.GLContext`` is fixed when mujoco is first imported, and
    ``torchrl.envs`` imports mujoco, often before ``MUJOCO_GL`` is set (then it
    is GLFW, which needs a display). Picking the class here makes headless
    EGL the default whatever the import order.
    """
    backend = os.environ.get("MUJOCO_GL", "egl").lower()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        GLContext = mujoco.GLContext
    return GLContext


def _close_all() -> None:
    for renderer in list(_OPEN):
        renderer.close()


def track_renderer(renderer: FrameRenderer) -> None:
    """Have ``renderer`` closed at interpreter exit (a renderer that opens its own GL context calls this)."""
    # Free GL contexts at exit while EGL is still up, not in __del__ at teardown.
    # Registered after mujoco's first context registered `eglTerminate`: atexit
    # runs last-in first-out, so this runs before it.
    if not _EXIT_HOOK:
        atexit.register(_close_all)
        _EXIT_HOOK.append(True)
    _OPEN.add(renderer)


#: visual geoms live in groups 0-2; group 3 holds collision-only boxes
_HIDDEN_GROUP = 3


class FrameRenderer:
    """Renders square RGB frames of any scene model (built from :mod:`.mjcf`) with one GL context.

    Args:
        size: side of the square frames in pixels.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._gl = None
        self._ctx = None
        self._scene = None
        self._option = mujoco.MjvOption()
        self._option.geomgroup[_HIDDEN_GROUP] = 0
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, self.size, self.size)

    def _open(self, model: mujoco.MjModel) -> None:
        self._gl = gl_context_class()(self.size, self.size)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=256)
        track_renderer(self)

    def render(self, model: mujoco.MjModel, data: mujoco.MjData, camera: int, out: np.ndarray) -> None:
        """Draw camera ``camera`` of ``(model, data)`` into ``out`` (uint8 ``[S, S, 3]``, HWC)."""
        if self._gl is None:
            self._open(model)
        self._gl.make_current()
        self._camera.fixedcamid = camera
        mujoco.mjv_updateScene(
            model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(out, None, self._rect, self._ctx)
        out[:] = out[::-1]  # GL rows run bottom-up

    def close(self) -> None:
        """Free the GL resources (safe to call twice)."""
        ctx, gl = self._ctx, self._gl
        self._ctx = self._gl = self._scene = None
        try:
            if ctx is not None:
                gl.make_current()  # free our GL objects, not those of whichever context is current
                ctx.free()
            if gl is not None:
                gl.free()
        except Exception:  # at interpreter exit EGL may already be torn down
            gl._context = None  # and mujoco's GLContext.__del__ would try again

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # GL handles don't cross processes: a copy reopens its own context lazily
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])
