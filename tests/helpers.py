"""Small builders shared by tests (real TensorDicts in the trainer's layout)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.keys import (
    GROUP_ID_KEY,
    INIT_STATE_KEY,
    RETURN_KEY,
    SAMPLE_LOG_PROBS_KEY,
    TASK_INDEX_KEY,
    TRAJ_ID_KEY,
    TRAJ_TOKENS_KEY,
)
from vla_grpo.policies.tiny import TinyVLAPolicy

H, A = 2, 3

#: What the policy computes in float over a batch (the sampled tokens' log-probs). A float32
#: matmul / log-softmax may round differently when the same rows sit in another batch shape, in
#: another process or under another thread count (AVX-512 kernels do: 2.4e-7 seen on an AMD EPYC),
#: so across layouts these agree to rounding, not bit for bit. Everything else in a rollout record
#: (tokens, actions, frames, states, done/success, ids) must stay exactly equal.
POLICY_FLOAT_KEYS = (SAMPLE_LOG_PROBS_KEY,)
#: the tolerance for those: 40x the largest difference seen, far below any change a loss could feel
POLICY_FLOAT_ATOL = 1e-5


def assert_same_record(one: TensorDict, two: TensorDict, *, where=None) -> None:
    """Two rollout records of the same episodes computed in different batch layouts or processes.

    Exact for every entry but :data:`POLICY_FLOAT_KEYS`, which are compared to
    :data:`POLICY_FLOAT_ATOL`; ``where`` (a bool mask over the batch dims) restricts both to it.
    """
    assert one.shape == two.shape
    keys = sorted(one.keys(include_nested=True, leaves_only=True), key=str)
    assert keys == sorted(two.keys(include_nested=True, leaves_only=True), key=str)
    for key in keys:
        a, b = (one[key], two[key]) if where is None else (one[key][where], two[key][where])
        if key in POLICY_FLOAT_KEYS:
            torch.testing.assert_close(a, b, atol=POLICY_FLOAT_ATOL, rtol=0, msg=str(key))
        else:
            assert torch.equal(a, b), key


def make_trajectory(*, group_id: int, traj_id: int, length: int, success: bool) -> TensorDict:
    """A finished trajectory of ``length`` decisions as ``split_trajectories`` writes it."""
    reward = torch.zeros(length, 1)
    reward[-1] = float(success)
    done = torch.zeros(length, 1, dtype=torch.bool)
    done[-1] = True
    ids = lambda v: torch.full((length, 1), v, dtype=torch.int64)  # noqa: E731
    return TensorDict(
        {
            "observation": {"state": torch.randn(length, 4)},
            "vla_action": {"tokens": torch.randint(8, (length, H, A))},
            SAMPLE_LOG_PROBS_KEY: -torch.rand(length, H, A),
            GROUP_ID_KEY: ids(group_id),
            TASK_INDEX_KEY: ids(0),
            INIT_STATE_KEY: ids(0),
            TRAJ_ID_KEY: ids(traj_id),
            TRAJ_TOKENS_KEY: ids(length * H * A),
            RETURN_KEY: torch.full((length, 1), float(success)),
            "next": {"reward": reward, "done": done},
        },
        batch_size=[length],
    )


def run_cli_error(capsys, *args) -> str:
    """Runs the CLI in-process; returns stderr. A config error must exit 2, not raise."""
    from vla_grpo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


class BrokenSimSuite(ToyReachSuite):
    """A toy suite whose env raises once it is asked to step (for worker-error tests; importable by workers)."""

    def make_env(self, num_envs: int, *, chunk_size: int, seed: int = 0):
        env = super().make_env(num_envs, chunk_size=chunk_size, seed=seed)

        def broken_step(tensordict):
            raise FloatingPointError("the simulation diverged")

        env._step = broken_step
        return env


def toy_policy(seed: int = 0) -> TinyVLAPolicy:
    """A small TinyVLA for the toy suite, its weights seeded, sampling at the GRPO temperature."""
    torch.manual_seed(seed)
    return TinyVLAPolicy(action_dim=2, chunk_size=4, state_dim=6, image_size=16, hidden_dim=32,
                         vocab_size=32, temperature=1.6)


def read_video(path) -> np.ndarray:
    """The frames ``[T, H, W, 3]`` uint8 of a GIF or an MP4 (with PyAV, or imageio-ffmpeg's reader)."""
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".gif" or importlib.util.find_spec("av") is not None:
        import imageio.v3 as iio

        return iio.imread(path, index=None, plugin=None if path.suffix == ".gif" else "pyav")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


ROOT = Path(__file__).resolve().parents[1]


def toy_fit(run: Path, *extra: str, steps: int = 5, env: dict | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """A real ``fit`` of conf/toy.yaml through the CLI, small (2 groups, 3 prompts per round, evals every 2
    steps on 2 states), ``last.ckpt`` written after every step to ``<run>/ckpt`` (the resume and stop tests).
    It runs in a session of its own: a kill of the process group takes every rank, and nothing of the test's."""
    cmd = [sys.executable, "-m", "vla_grpo", "fit", "-c", str(ROOT / "conf/toy.yaml"), f"--trainer.max_steps={steps}",
           f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
           "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
           "--model.groups_per_step=2", "--model.prompts_per_round=3", "--model.eval_states_per_task=2",
           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
           "--trainer.callbacks.init_args.every_n_train_steps=1", "--trainer.callbacks.init_args.save_last=true",
           "--trainer.callbacks.init_args.save_top_k=0", f"--trainer.callbacks.init_args.dirpath={run}/ckpt", *extra]
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def ckpt_weights(ckpt: Path) -> tuple[dict[str, torch.Tensor], int]:
    """A checkpoint file's policy weights and its global step."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("policy.")}, state["global_step"]
