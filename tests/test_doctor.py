"""`python -m vla_grpo doctor` passes here; a backend that cannot render fails it, and `fit`, with one line naming the fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the quickstart cut down: it never gets past the check in these tests, and must not train if it did
QUICKSTART_TINY = ["-c", "conf/quickstart.yaml", "--trainer.max_steps=1", "--model.num_workers=1",
                   "--model.groups_per_step=1", "--model.prompts_per_round=1", "--model.eval_states_per_task=1"]


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # PYOPENGL_PLATFORM too: importing mujoco under EGL sets it in this process (an earlier test may
    # have), and a user's shell with a bad MUJOCO_GL has none
    gl = ("MUJOCO_GL", "MUJOCO_EGL_DEVICE_ID", "PYOPENGL_PLATFORM")
    full = {k: v for k, v in os.environ.items() if k not in gl}
    full.update({"MUJOCO_GL": "egl", "PYTHONWARNINGS": "ignore", **env})
    return subprocess.run([sys.executable, "-m", "vla_grpo", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=600)


def _fit_until_the_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    run = tmp_path / "run"
    return _run(["fit", *QUICKSTART_TINY, f"--trainer.default_root_dir={run}",
                 f"--trainer.logger.init_args.save_dir={run}", f"--model.sft.init_args.root_dir={run}/sft"],
                tmp_path, **env)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0].removeprefix("error: ")


def test_doctor_passes_here(tmp_path):
    proc = _run(["doctor"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "doctor: every check passed"
    status = {ln[6:22].strip(): ln[:4].strip() for ln in lines[:-1]}
    assert status["render toy"] == status["render tabletop"] == status["render bimanual"] == "ok"
    assert status["workers"] == "ok" and "FAIL" not in status.values()
    assert status["libero assets"] in ("ok", "skip")  # skip without the [libero] extra
    assert {"python", "torch", "gpu", "video", "loggers"} <= set(status)


def test_a_backend_that_cannot_load_fails_doctor_and_fit_with_the_same_line(tmp_path):
    doctor = _run(["doctor"], tmp_path, MUJOCO_GL="nonsense")
    assert doctor.returncode == 1 and "Traceback" not in doctor.stdout + doctor.stderr
    assert doctor.stdout.splitlines()[-1].startswith("doctor: ") and "failed" in doctor.stdout.splitlines()[-1]
    line = next(ln for ln in doctor.stdout.splitlines() if ln.startswith("FAIL  render tabletop"))[23:]
    assert line == ("rendering: MUJOCO_GL=nonsense is not a MuJoCo GL backend (expected one of egl, osmesa, "
                    "glfw); fix: export MUJOCO_GL=egl (it renders here)")

    # `import mujoco` itself fails: fit stops before building anything, tabletop or toy
    assert _one_error_line(_fit_until_the_check(tmp_path, MUJOCO_GL="nonsense")) == line
    toy = _run(["fit", "-c", "conf/toy.yaml", f"--trainer.default_root_dir={tmp_path}/toy"], tmp_path,
               MUJOCO_GL="nonsense")
    assert _one_error_line(toy) == line
    assert not (tmp_path / "run").exists() and not (tmp_path / "toy").exists()


def test_a_first_frame_that_fails_stops_fit_before_any_worker(tmp_path):
    # mujoco imports, but no EGL device 99 exists: only rendering a frame finds out (the subprocess check)
    doctor = _run(["doctor"], tmp_path, MUJOCO_EGL_DEVICE_ID="99")
    line = next(ln for ln in doctor.stdout.splitlines() if ln.startswith("FAIL  render tabletop"))[23:]
    assert line.startswith("rendering: The MUJOCO_EGL_DEVICE_ID environment variable must be an integer")
    assert line.endswith("; fix: unset MUJOCO_EGL_DEVICE_ID (it renders here)")
    assert doctor.returncode == 1 and "ok    render toy" in doctor.stdout  # the toy draws without GL

    fit = _fit_until_the_check(tmp_path, MUJOCO_EGL_DEVICE_ID="99")
    assert _one_error_line(fit) == line
    # stopped before the SFT stage, the demos and the simulators: nothing written, no worker started
    assert "vla_grpo-sim" not in fit.stdout + fit.stderr
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not (tmp_path / "run/sft").exists()


@pytest.mark.parametrize("argv", [["--no-such"], ["extra", "args"]])
def test_doctor_takes_no_arguments(tmp_path, argv):
    proc = _run(["doctor", *argv], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: `doctor` takes no arguments")


def test_on_a_gpu_machine_an_egl_device_outside_cuda_visible_devices_fails_with_the_fix(monkeypatch):
    # no GPU here: torch.cuda is patched to show two devices (what `doctor` reads of it)
    import torch

    from vla_grpo.doctor import FAIL, OK, torch_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU{i}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("MUJOCO_EGL_DEVICE_ID", "0")
    checks = {c.name: c for c in torch_devices()}
    assert checks["gpu"].status == OK and "2 CUDA device(s): GPU0, GPU1" in checks["gpu"].message
    assert checks["egl device"].status == FAIL
    assert checks["egl device"].message.endswith("fix: export MUJOCO_EGL_DEVICE_ID=2")
    monkeypatch.setenv("MUJOCO_EGL_DEVICE_ID", "3")
    assert "egl device" not in {c.name for c in torch_devices()}
