"""Kill a real ``fit`` with SIGKILL and resume it from ``last.ckpt``: the weights end bit-identical
to the uninterrupted run's, and a kill during a checkpoint save leaves the previous one loadable."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import ckpt_weights, toy_fit

STEPS = 5


def _fit(run: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return toy_fit(run, *extra, steps=STEPS, timeout=timeout)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    proc = _fit(run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights, step = ckpt_weights(run / "ckpt" / "last.ckpt")
    assert step == STEPS
    return weights


def _kill_and_resume(run: Path, step: int, phase: str) -> tuple[dict, int]:
    killed = _fit(run, "--trainer.callbacks+=tests.kill_probe.KillAt", f"--trainer.callbacks.init_args.step={step}",
                  f"--trainer.callbacks.init_args.phase={phase}", "--trainer.callbacks.init_args.at_byte=500000")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    _, saved_at = ckpt_weights(run / "ckpt" / "last.ckpt")  # loadable, whatever the kill interrupted
    resumed = _fit(run, f"--ckpt_path={run}/ckpt/last.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights, final = ckpt_weights(run / "ckpt" / "last.ckpt")
    assert final == STEPS
    return weights, saved_at


@pytest.mark.parametrize("step, phase", [(2, "step_start"), (3, "mid_rollout"), (4, "in_save")])
def test_sigkill_then_resume_ends_bit_identical(straight, tmp_path, step, phase):
    weights, saved_at = _kill_and_resume(tmp_path, step, phase)
    # killed after `step` steps (as the next began, or in its rollouts): their checkpoint stands;
    # killed half-way through writing step `step`'s checkpoint: the one before it stands
    assert saved_at == (step - 1 if phase == "in_save" else step)
    # bit for bit: the resumed run repeats the same computation (one process, the same batches in
    # the same layout, the same thread count); across layouts it would agree to rounding only
    for k, v in straight.items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=0)


def test_a_full_disk_during_a_save_is_one_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    from vla_grpo.checkpoint import AtomicCheckpointIO, CheckpointWriteError

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"policy.w": torch.ones(3)}, "global_step": 1}, path)

    def full(fd):  # the disk fills while the new checkpoint is flushed (no real full disk on CI)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointWriteError, match=rf"could not write checkpoint {path}: the disk is full; the previous"):
        io.save_checkpoint({"state_dict": {"policy.w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind
    assert torch.load(path, weights_only=True)["global_step"] == 1


def test_a_resumed_run_does_not_evaluate_again_where_it_stopped(tmp_path):
    """SplitEvaluation(at_fit_start=True) evaluates at step 0 only: a run stopped at step 3 and resumed keeps
    its curve (0, after step 2, the end at 3) and adds only the scheduled ones (after step 4, the end at 5),
    not one more at 3 as it starts again."""
    from tests.helpers import toy_fit
    from vla_grpo.tb import read_scalars

    run = tmp_path / "run"
    first = toy_fit(run, steps=3)
    assert first.returncode == 0, first.stderr[-2000:]
    second = toy_fit(run, "--ckpt_path=last", steps=5)
    assert second.returncode == 0, second.stderr[-2000:]
    steps = [s for s, _ in read_scalars(run)["eval/train/success"]]
    # Lightning logs the scheduled evals (after steps 2 and 4) at steps 1 and 3; the ends at 3 and 5.
    # Before the fix a resumed start added another 3: [0, 1, 3, 3, 3, 5].
    assert steps == [0, 1, 3, 3, 5]
