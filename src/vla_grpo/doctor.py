"""``python -m vla_grpo doctor``: checks this machine can run the trainer, one line per check, with the fix.

    python -m vla_grpo doctor                  # every check; exit code 1 if one fails
    MUJOCO_GL=osmesa python -m vla_grpo doctor # try another rendering backend

Checks, in order: a frame of every installed suite renders offscreen (in a
subprocess: a bad ``MUJOCO_GL`` breaks ``import mujoco`` for the whole process;
:mod:`vla_grpo.glcheck`, the same check and line as training's start-up);
LIBERO's extra and assets load and render, when installed; two simulator
worker processes start and step; torch's threads and devices, and the CUDA /
EGL device ids on a GPU machine; which optional extras (MP4 videos, loggers) are there.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

OK, FAIL, SKIP, INFO = "ok", "FAIL", "skip", "info"
#: a small frame per suite, and LIBERO cut to one task (its catalogue and assets load per task)
SMALL = {"toy": {"image_size": 16}, "tabletop": {"image_size": 32}, "bimanual": {"image_size": 32},
         "libero": {"suite": "libero_spatial", "task_ids": [0], "unseen": [], "image_size": 32,
                    "num_init_states": 1}}


@dataclass
class Check:
    """One line of the report: ``status  name  message`` (the message holds the fix when it failed)."""

    status: str
    name: str
    message: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<16} {self.message}"


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def rendering() -> list[Check]:
    """A frame of each installed suite, in one subprocess (LIBERO's line says whether its assets load)."""
    from vla_grpo import glcheck
    from vla_grpo.envs.registry import SUITES, available_suites, suite_names

    names = available_suites()
    specs = [glcheck.suite_spec(SUITES[n].path, SMALL.get(n)) for n in names]
    results = glcheck.Probe(specs).results()
    checks, known = [], {}  # one GL diagnosis serves every suite that failed the same way
    for name, spec, result in zip(names, specs, results, strict=True):
        label = "libero assets" if name == "libero" else f"render {name}"
        if result["ok"]:
            gl = f"MUJOCO_GL={glcheck.backend()}" if glcheck.needs_gl(spec["class_path"]) else "drawn by torch, no GL"
            what = "libero_spatial task 0: BDDL, init states and meshes load; " if name == "libero" else ""
            shape = "x".join(map(str, result["shape"]))
            checks.append(Check(OK, label, f"{what}a {shape} frame ({gl}, {result['seconds']:.1f} s)"))
            continue
        if result["error"] not in known:
            known[result["error"]] = glcheck.suite_problem(result, spec)
        checks.append(Check(FAIL, label, known[result["error"]]))
    for name in suite_names():
        if name not in names:
            checks.append(Check(SKIP, f"{name} assets" if name == "libero" else f"render {name}",
                                f"not installed: {SUITES[name].install}"))
    return checks


def workers(rendered: list[Check]) -> Check:
    """Two simulator worker processes (:class:`~vla_grpo.simpool.SimulatorPool`) start, reset and step."""
    from vla_grpo.envs.registry import available_suites

    name = "tabletop" if "tabletop" in available_suites() else "toy"
    if any(c.status == FAIL and c.name == f"render {name}" for c in rendered):
        return Check(SKIP, "workers", f"skipped: {name} does not render (above)")
    import torch

    from vla_grpo.envs.registry import make_suite
    from vla_grpo.prompts import Prompt, prompt_reset_td
    from vla_grpo.simpool import SimulatorPool

    suite = make_suite(name, **SMALL[name])
    start = time.perf_counter()
    try:
        pool = SimulatorPool(suite, num_envs=2, chunk_size=1, num_workers=2, timeout_s=120, start_timeout_s=300)
    except Exception as err:
        return Check(FAIL, "workers", f"2 {name} simulator processes did not start ({type(err).__name__}: "
                                      f"{str(err).strip().splitlines()[-1][:200]}); run with --model.num_workers=1 "
                                      "to simulate in the trainer process")
    try:
        started = time.perf_counter() - start
        pool.reset(prompt_reset_td([Prompt(0, 0), Prompt(0, 1)], [0, 1]))
        td = pool.step(torch.zeros(2, 1, suite.action_dim), torch.ones(2, dtype=torch.bool))
        steps = int(td.batch_size[0])
        pids = ", ".join(map(str, pool.pids))
    except Exception as err:
        return Check(FAIL, "workers", f"{name} simulator processes started but failed to step "
                                      f"({type(err).__name__}: {str(err).strip().splitlines()[-1][:200]})")
    finally:
        pool.close()
    return Check(OK, "workers", f"2 {name} simulator processes (pids {pids}) started in {started:.1f} s, "
                                f"reset and stepped {steps} envs")


def torch_devices() -> list[Check]:
    """Threads and devices; on a GPU machine, CUDA and EGL device ids (and whether they agree)."""
    import torch

    cores = os.cpu_count() or 1
    checks = [Check(INFO, "torch", f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads, "
                                   f"{torch.get_num_interop_threads()} inter-op, {cores} cores "
                                   "(each simulator worker uses 1 thread)")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    egl = os.environ.get("MUJOCO_EGL_DEVICE_ID")
    if not torch.cuda.is_available():
        ids = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        checks.append(Check(INFO, "gpu", f"none: training runs on CPU{ids}"))
        return checks
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    checks.append(Check(OK, "gpu", f"{len(names)} CUDA device(s): {', '.join(names)}; "
                                   f"CUDA_VISIBLE_DEVICES={visible}, MUJOCO_EGL_DEVICE_ID={egl}"))
    if egl is not None and visible and egl not in [v.strip() for v in visible.split(",")]:
        # robosuite (LIBERO) asserts this; the EGL device list is not narrowed by CUDA_VISIBLE_DEVICES
        checks.append(Check(FAIL, "egl device", f"MUJOCO_EGL_DEVICE_ID={egl} is not among CUDA_VISIBLE_DEVICES="
                                                f"{visible}; fix: export MUJOCO_EGL_DEVICE_ID={visible.split(',')[0]}"))
    return checks


def extras() -> list[Check]:
    """Optional extras: the MP4 encoder of EvalVideo and the experiment loggers."""
    av, ffmpeg = _version("av"), _version("imageio-ffmpeg")
    video = (f"MP4 eval videos (PyAV {av})" if av else f"MP4 eval videos (imageio-ffmpeg {ffmpeg})" if ffmpeg
             else "GIF eval videos; pip install -e '.[video]' for MP4")
    loggers = [f"{d} {_version(d)}" for d in ("wandb", "mlflow", "mlflow-skinny") if _version(d)]
    logged = ("TensorBoard, " + ", ".join(loggers)) if loggers else \
        "TensorBoard; pip install -e '.[wandb]' or '.[mlflow]' for the others (docs/loggers.md)"
    return [Check(INFO, "video", video), Check(INFO, "loggers", logged)]


def run() -> list[Check]:
    """Every check, printed as it completes."""
    checks: list[Check] = []

    def report(new: list[Check]) -> None:
        for check in new:
            print(check.line(), flush=True)
        checks.extend(new)

    pins = ", ".join(f"{d} {_version(d)}" for d in ("torch", "torchrl", "lightning", "mujoco"))
    report([Check(INFO, "python", f"{sys.version.split()[0]}: {pins}; MUJOCO_GL={os.environ.get('MUJOCO_GL')}")])
    rendered = rendering()
    report(rendered)
    report([workers(rendered)])
    report(torch_devices())
    report(extras())
    return checks


def main(argv: list[str]) -> None:
    """``python -m vla_grpo doctor``: prints the checks; exits 1 if any failed."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv:
        print(f"error: `doctor` takes no arguments (got {' '.join(argv)})", file=sys.stderr)
        raise SystemExit(2)
    os.environ.setdefault("MUJOCO_GL", "egl")
    failed = [c for c in run() if c.status == FAIL]
    print(f"doctor: {len(failed)} check(s) failed" if failed else "doctor: every check passed")
    if failed:
        raise SystemExit(1)
