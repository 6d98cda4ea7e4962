"""Can this machine render a suite's frames offscreen? The MuJoCo GL check of `doctor` and of training's start-up.

A wrong ``MUJOCO_GL``, a missing Mesa library or a bad EGL device id breaks
``import mujoco`` (or the first frame) for the whole process, and a training
run used to find out when a simulator worker died. So a frame is rendered in a
**subprocess** (``python -m vla_grpo.glcheck SPEC``, which prints one JSON line
per suite), and a failure becomes one line naming the fix (:func:`explain`):
the other backends are tried on a tiny scene, so the fix says what renders here
(``export MUJOCO_GL=egl (it renders here)``), else which packages to install.
:func:`import_problem` is the in-process part: ``import mujoco`` loads the
backend's library, and every config imports it (TorchRL does), the toy's too.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

APT_EGL = "apt-get install -y libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri"
APT_OSMESA = "apt-get install -y libosmesa6"
#: the backends MuJoCo knows (``mujoco/gl_context.py``)
BACKENDS = ("egl", "osmesa", "glfw")
_TINY = ("<mujoco><worldbody><light pos='0 0 2'/><geom type='plane' size='1 1 .1' rgba='.2 .3 .8 1'/>"
         "<geom type='box' pos='.2 0 .1' size='.1 .1 .1' rgba='1 0 0 1'/>"
         "<camera name='c' pos='0 -1.2 .8' xyaxes='1 0 0 0 .6 .8'/></worldbody>"
         "<visual><quality shadowsize='0'/></visual></mujoco>")
#: specs already rendered in this process: (suite class, MUJOCO_GL, MUJOCO_EGL_DEVICE_ID)
_PASSED: set[tuple] = set()


def backend() -> str:
    """The chosen backend (``MUJOCO_GL``; ``egl`` when unset, as our entry points set it)."""
    return os.environ.get("MUJOCO_GL", "egl")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def import_problem() -> str | None:
    """``import mujoco`` here (it loads the ``MUJOCO_GL`` backend's library): None, or one line with the fix."""
    env = dict(os.environ)  # as the user set it: a failed backend import sets PYOPENGL_PLATFORM itself
    try:
        importlib.import_module("mujoco")
    except Exception as err:  # RuntimeError (bad name), ImportError/AttributeError (a library missing)
        return explain(_first_line(err), env)
    return None


# -- the subprocess ------------------------------------------------------------------------
def suite_spec(class_path: str, init_args: dict | None = None) -> dict:
    """What the probe builds: ``{"class_path": "module.Class" or "module:Class", "init_args": {...}}``."""
    return {"class_path": class_path, "init_args": dict(init_args or {})}


def _suite_class(class_path: str) -> type:
    module, _, name = class_path.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module), name)


def _build(spec: dict):
    """The object a ``{"class_path", "init_args"}`` spec names; nested specs in ``init_args`` (a
    wrapper suite's ``suite``) are built first, as the CLI builds them."""
    args = {k: _build(v) if isinstance(v, dict) and "class_path" in v else v
            for k, v in (spec.get("init_args") or {}).items()}
    return _suite_class(spec["class_path"])(**args)


def needs_gl(class_path: str) -> bool:
    """Whether a suite class renders through MuJoCo's GL (``Suite.renders_offscreen``; toy: drawn by torch)."""
    return bool(getattr(_suite_class(class_path), "renders_offscreen", True))


def _render(spec: dict) -> dict:
    """One frame of a suite: reset a 1-env batch to task 0, state 0."""
    if spec.get("class_path") is None:  # the tiny scene: the backend alone
        import mujoco

        model = mujoco.MjModel.from_xml_string(_TINY)
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)  # places the camera
        with mujoco.Renderer(model, 16, 16) as renderer:
            renderer.update_scene(data, camera="c")
            frame = renderer.render()
        return {"shape": list(frame.shape), "blank": bool(frame.std() == 0)}
    from vla_grpo.prompts import Prompt, prompt_reset_td

    suite = _build(spec)
    env = suite.make_env(1, chunk_size=1, seed=0)
    try:
        image = env.reset(prompt_reset_td([Prompt(0, 0)], [0]))["observation", "image"]
    finally:
        env.close()
    return {"shape": list(image.shape[-3:]), "blank": bool(image.float().std() == 0)}


def probe_main(argv: list[str]) -> None:
    """``python -m vla_grpo.glcheck SPEC_JSON``: one JSON line per spec of the list, as each renders."""
    for spec in json.loads(argv[0]):
        start = time.perf_counter()
        try:
            out = {"ok": True, **_render(spec)}
            if out["blank"]:
                out = {"ok": False, "error": "the frame is one colour: the GL backend drew nothing"}
        except Exception as err:
            out = {"ok": False, "error": _first_line(err)}
        print(json.dumps({**out, "seconds": round(time.perf_counter() - start, 2)}), flush=True)


class Probe:
    """Renders ``specs`` in a subprocess (started now; :meth:`results` waits for it)."""

    def __init__(self, specs: list[dict], env: dict | None = None, timeout_s: float = 600.0) -> None:
        self.specs, self.timeout_s = specs, timeout_s
        #: what :func:`finish_suite_check` remembers as rendered when this probe passes
        self.key: tuple | None = None
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("MUJOCO_GL", "egl")
        self._proc = subprocess.Popen([sys.executable, "-m", "vla_grpo.glcheck", json.dumps(specs)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)

    def results(self) -> list[dict]:
        """One ``{"ok", "error" | "shape", "seconds"}`` per spec; a crash or a hang fails the rest."""
        try:
            out, err = self._proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, err = self._proc.communicate()
            err = f"TimeoutError: no frame within {self.timeout_s:.0f} s (a hung GL driver?)"
        results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        lines = [ln for ln in (err or "").strip().splitlines() if ln.strip() and not ln.startswith(" ")]
        why = lines[-1] if lines else f"the render process exited with code {self._proc.returncode}"
        return results + [{"ok": False, "error": why}] * (len(self.specs) - len(results))


def renders(env: dict) -> bool:
    """Whether the tiny scene renders under ``env`` (a subprocess)."""
    return Probe([{}], env=env, timeout_s=120).results()[0]["ok"]


# -- the one line --------------------------------------------------------------------------
def _what(error: str, chosen: str) -> str:
    error = error.split(", this most likely")[0][:200]  # MuJoCo's FatalError goes on for a paragraph
    if "invalid value for environment variable MUJOCO_GL" in error:
        return f"MUJOCO_GL={chosen} is not a MuJoCo GL backend (expected one of {', '.join(BACKENDS)})"
    if "MUJOCO_EGL_DEVICE_ID" in error:
        return error.split(": ", 1)[-1].rstrip(".")
    if chosen == "osmesa":
        return f"MUJOCO_GL=osmesa: the OSMesa library did not load ({error})"
    if chosen == "glfw" or "OpenGL platform library has not been loaded" in error:
        return f"MUJOCO_GL={chosen} needs a display, which a headless machine has not ({error})"
    return f"MUJOCO_GL={chosen}: no offscreen GL context ({error})"


def _candidates(env: dict) -> list[tuple[str, dict]]:
    """Environment changes that may render, each with the command that makes it, in the order to try."""
    chosen, out = env.get("MUJOCO_GL", "egl"), []
    clean = {k: v for k, v in env.items() if k != "PYOPENGL_PLATFORM"}
    unset_pyopengl = " && unset PYOPENGL_PLATFORM" if "PYOPENGL_PLATFORM" in env else ""
    if chosen == "egl" and "MUJOCO_EGL_DEVICE_ID" in env:
        out.append(("unset MUJOCO_EGL_DEVICE_ID", {k: v for k, v in env.items() if k != "MUJOCO_EGL_DEVICE_ID"}))
    for other in ("egl", "osmesa"):
        if other != chosen:
            out.append((f"export MUJOCO_GL={other}{unset_pyopengl}", {**clean, "MUJOCO_GL": other}))
    return out


def explain(error: str, env: dict | None = None) -> str:
    """One line for a rendering failure: what failed and the fix, found by trying the other backends here."""
    env = dict(os.environ if env is None else env)
    chosen = env.get("MUJOCO_GL", "egl")
    what = _what(error, chosen)
    for command, changed in _candidates(env):
        if renders(changed):
            return f"rendering: {what}; fix: {command} (it renders here)"
    return (f"rendering: {what}; fix: {APT_EGL} and export MUJOCO_GL=egl, or {APT_OSMESA} and "
            "export MUJOCO_GL=osmesa")


def suite_problem(result: dict, spec: dict, env: dict | None = None) -> str | None:
    """None when ``result`` is a frame, else the one line: the GL fix, or the suite's own error when
    the backend renders a tiny scene here (then GL is not the problem)."""
    if result["ok"]:
        return None
    env = dict(os.environ if env is None else env)
    name = spec["class_path"].replace(":", ".").rpartition(".")[2]
    if renders(env):
        return f"rendering: MUJOCO_GL={env.get('MUJOCO_GL', 'egl')} renders, but a {name} frame failed: {result['error']}"
    return explain(result["error"], env)


def start_suite_check(class_path: str, init_args: dict | None = None) -> Probe | None:
    """Training's start-up check, started: a subprocess rendering one frame of the configured suite
    (None when the suite draws without GL, or this process already rendered it with this backend)."""
    key = (class_path, backend(), os.environ.get("MUJOCO_EGL_DEVICE_ID"))
    if key in _PASSED or not needs_gl(class_path):
        return None
    probe = Probe([suite_spec(class_path, init_args)])
    probe.key = key
    return probe


def finish_suite_check(probe: Probe | None) -> str | None:
    """Waits for :func:`start_suite_check`'s frame: None, or the one line with the fix."""
    if probe is None:
        return None
    problem = suite_problem(probe.results()[0], probe.specs[0], probe.env)
    if problem is None:
        _PASSED.add(probe.key)
    return problem


if __name__ == "__main__":
    probe_main(sys.argv[1:])
