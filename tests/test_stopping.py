"""Stopping is safe (vla_grpo.stopping): a real SIGINT or SIGTERM reaches a real toy ``fit`` (simulators in
worker processes) at a chosen step and phase; the run writes a checkpoint, exits ``128 + signal`` and
leaves no simulator behind, every step is logged once under its own number, the evals run where an
uninterrupted run's do, and resuming from that checkpoint ends on the uninterrupted run's weights,
bit for bit. A second signal during the save exits at once and keeps the previous checkpoint. A kill
during a save leaves a loadable checkpoint, for a checkpoint file and for a sharded (FSDP2) folder."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ckpt_weights, toy_fit
from vla_grpo.tb import read_scalars

STEPS = 5
FSDP = ('{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", '
        '"init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}')


def _fit(run: Path, *extra: str, steps: int = STEPS, env: dict | None = None,
         timeout: int = 600) -> subprocess.CompletedProcess:
    """The toy fit with its simulators in 2 worker processes (whose pids the stop tests check), one thread."""
    return toy_fit(run, "--model.num_workers=2", *extra, steps=steps, env={"OMP_NUM_THREADS": "1", **(env or {})},
                   timeout=timeout)


def _signal_at(step: int, phase: str, signum: int, pids: Path | None = None, **more) -> list[str]:
    args = ["--trainer.callbacks+=tests.signal_probe.SignalAt", f"--trainer.callbacks.init_args.step={step}",
            f"--trainer.callbacks.init_args.phase={phase}", f"--trainer.callbacks.init_args.signum={int(signum)}"]
    if pids is not None:
        args.append(f"--trainer.callbacks.init_args.pids_file={pids}")
    return args + [f"--trainer.callbacks.init_args.{k}={v}" for k, v in more.items()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by a parent) is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _assert_no_orphans(pids_file: Path) -> None:
    files = list(pids_file.parent.glob(f"{pids_file.name}.*"))
    assert files, "the probe recorded no pids"
    for f in files:
        pids = json.loads(f.read_text())
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in [pids["trainer"], *pids["workers"]]) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [p for p in [pids["trainer"], *pids["workers"]] if _alive(p)]
        assert not alive, f"processes outlived the stopped run: {alive}"


def _logged_steps(run: Path) -> dict[str, list[int]]:
    """The steps each curve has a point at: training (every step) and the greedy evals (the schedule)."""
    scalars = read_scalars(run)
    return {tag: [step for step, _ in scalars[tag]] for tag in ("train/loss", "eval/train/success")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("straight")
    proc = _fit(run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights, step = ckpt_weights(run / "ckpt" / "last.ckpt")
    assert step == STEPS
    return {"weights": weights, "logged": _logged_steps(run)}


def _stop_and_resume(run: Path, step: int, phase: str, signum: int, env: dict | None = None, **more) -> int:
    """Signal a fit, check its stop, resume it; the step its checkpoint was written at.

    Outside Slurm the stop writes ``last.ckpt`` and the run is resumed with ``--ckpt_path=last``; in a
    Slurm job (``env``) it writes Lightning's ``hpc_ckpt_1.ckpt`` and the same command resumes from it."""
    pids = run / "pids.json"
    stopped = _fit(run, *_signal_at(step, phase, signum, pids, **more), env=env)
    name = signal.Signals(signum).name
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {name}: checkpoint of step") and "--ckpt_path=" in last, last
    _assert_no_orphans(pids)
    ckpt = run / "hpc_ckpt_1.ckpt" if env else run / "ckpt" / "last.ckpt"
    assert f"--ckpt_path={ckpt}" in last
    _, saved_at = ckpt_weights(ckpt)
    resumed = _fit(run, env=env) if env else _fit(run, "--ckpt_path=last")  # Lightning's "last": the stop's
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {ckpt}" in resumed.stdout + resumed.stderr
    # the resumed run's ModelCheckpoint owns the stop's last.ckpt: it overwrote it, wrote no last-v1.ckpt
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["last.ckpt"]
    # every step is in the curves once, under its own number: none lost at the stop, none shifted after it
    assert _logged_steps(run)["train/loss"] == list(range(STEPS))
    return saved_at


def _check_same(straight: dict, run: Path) -> None:
    weights, final = ckpt_weights(run / "ckpt" / "last.ckpt")
    assert final == STEPS
    # bit for bit: one process layout, the same batches, the same thread count (docs/RELIABILITY.md)
    for k, v in straight["weights"].items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=0)
    # the evals ran where the uninterrupted run's did, each once (none early, none twice at the end)
    assert _logged_steps(run) == straight["logged"]


def _slurm_job(tmp_path: Path) -> dict:
    """The environment of a 1-task Slurm job (Lightning's SLURMEnvironment reads it) whose ``scontrol`` is
    a stand-in recording its arguments (no Slurm on CI)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.args\n")
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vla_grpo",
            "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


# step 1's update is followed by an eval (the toy evaluates every 2 steps): the stop waits for it
@pytest.mark.parametrize("signum, step, phase", [(signal.SIGINT, 3, "mid_rollout"), (signal.SIGTERM, 2, "update"),
                                                 (signal.SIGINT, 1, "update")])
def test_a_signal_writes_a_checkpoint_that_resumes_bit_identically(straight, tmp_path, signum, step, phase):
    # SIGTERM as Slurm sends it (`#SBATCH --signal=SIGTERM@120`): the job is requeued after the checkpoint
    env = _slurm_job(tmp_path) if signum == signal.SIGTERM else None
    saved_at = _stop_and_resume(tmp_path / "run", step, phase, signum, env=env)
    # mid-rollout: the step is abandoned, the checkpoint is the state before it; in the update: the
    # step finishes, and the checkpoint is the state after it
    assert saved_at == (step if phase == "mid_rollout" else step + 1)
    _check_same(straight, tmp_path / "run")
    if env:
        assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]


@pytest.mark.slow
def test_ten_signal_times_all_resume_bit_identically(straight, tmp_path):
    """SIGINT and SIGTERM alternately, at 10 random (seeded) steps and points: as a step starts, after a
    random number of rollout decisions, or in the update."""
    rng = random.Random(33)
    for i in range(10):
        signum = (signal.SIGINT, signal.SIGTERM)[i % 2]
        phase = rng.choice(["step_start", "mid_rollout", "update"])
        step, after = rng.randrange(0, STEPS - 1), rng.randrange(1, 7)
        run = tmp_path / f"t{i}"
        _stop_and_resume(run, step, phase, signum, after_decisions=after)
        _check_same(straight, run)


def test_a_second_signal_during_the_save_exits_at_once_and_keeps_the_previous_checkpoint(tmp_path):
    pids = tmp_path / "pids.json"
    proc = _fit(tmp_path, *_signal_at(3, "twice_in_save", signal.SIGTERM, pids))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "SIGTERM again: stopping now; the last complete checkpoint stands" in proc.stderr
    _assert_no_orphans(pids)
    _, step = ckpt_weights(tmp_path / "ckpt" / "last.ckpt")  # loads: the half-written step-4 one never took its place
    assert step == 3


@pytest.mark.slow
def test_ddp_ranks_agree_to_stop_when_one_is_signalled(tmp_path):
    """Only rank 1 gets SIGTERM, mid-rollout; both ranks stop after the same step, with one checkpoint,
    and the resumed 2-rank run ends on the uninterrupted one's weights."""
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    straight = _fit(tmp_path / "straight", *ddp)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run, pids = tmp_path / "run", tmp_path / "pids.json"
    stopped = _fit(run, *ddp, *_signal_at(2, "mid_rollout", signal.SIGTERM, pids, rank=1))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    _assert_no_orphans(pids)
    resumed = _fit(run, *ddp, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, _ = ckpt_weights(tmp_path / "straight" / "ckpt" / "last.ckpt")
    _check_same({"weights": want, "logged": _logged_steps(tmp_path / "straight")}, run)


# -- a kill (SIGKILL: nothing can run) during a checkpoint save -----------------------------------------
def _sharded_step(ckpt: Path) -> int:
    """The step of a sharded checkpoint, after loading every shard (torch.distributed.checkpoint -> one file)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = ckpt.parent.parent / f"whole-{time.monotonic_ns()}.pt"
    dcp_to_torch_save(ckpt, out)
    state = torch.load(out, weights_only=False)
    assert any(k.startswith("policy.") for k in state["state_dict"])
    return torch.load(ckpt / "meta.pt", weights_only=False)["global_step"]


def _kill_in_save(run: Path, fmt: str, at_byte: int) -> int:
    """Kill a fit while step 3's checkpoint is written; the step of the checkpoint left at last.ckpt."""
    extra = ["--trainer.devices=2", f"--trainer.strategy={FSDP}"] if fmt == "sharded" else []
    killed = _fit(run, *extra, "--trainer.callbacks+=tests.kill_probe.KillAt", "--trainer.callbacks.init_args.step=3",
                  "--trainer.callbacks.init_args.phase=in_save", "--trainer.callbacks.init_args.group=true",
                  f"--trainer.callbacks.init_args.at_byte={at_byte}", steps=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = run / "ckpt" / "last.ckpt"
    if fmt == "sharded":
        assert last.is_symlink() and last.resolve().is_dir()
        return _sharded_step(last)
    return ckpt_weights(last)[1]


@pytest.mark.slow  # tests/test_fsdp.py saves and resumes through the atomic sharded writer in the default suite
def test_a_kill_during_a_sharded_save_keeps_the_previous_checkpoint(tmp_path):
    """FSDP2 on 2 processes (gloo): killed half-way through rank 0's shards of step 3, last.ckpt is still
    step 2's complete folder, and a resumed run completes from it."""
    assert _kill_in_save(tmp_path, "sharded", 300_000) == 2
    resumed = _fit(tmp_path, "--trainer.devices=2", f"--trainer.strategy={FSDP}", "--ckpt_path=last", steps=4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _sharded_step(tmp_path / "ckpt" / "last.ckpt") == 4
    # the publish removed the partial folder the kill left, and the previous one
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".last")) == [
        os.readlink(tmp_path / "ckpt" / "last.ckpt")]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["file", "sharded"])
def test_twenty_kills_during_a_save_always_leave_a_loadable_checkpoint(tmp_path, fmt):
    """20 kill points spread over the save of step 3: byte offsets of the write (a file: ~1 MB; sharded:
    rank 0's shards and meta.pt, ~0.6 MB), and for the sharded folder the two moments around its
    publication. last.ckpt always loads whole: step 2's, or step 3's once it was published."""
    if fmt == "file":
        points = [1 + i * 50_000 for i in range(20)]
    else:
        points = [1 + i * 35_000 for i in range(18)] + [-1, -2]
    for i, at in enumerate(points):
        step = _kill_in_save(tmp_path / f"k{i}", fmt, at)
        assert step == (3 if at == -2 else 2), (i, at, step)
