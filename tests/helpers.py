"""Small builders shared by tests (real TensorDicts in the trainer's layout)."""
from __future__ import annotations

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

H, A = 2, 3


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
