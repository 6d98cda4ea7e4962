"""Tests of the scene kit (vla_grpo.envs.scene) on the suites that stand on it: what its env adds to the contract.

The contract every suite owes is tests/test_suite_contract.py's; these are the
kit's own promises (a chunk stops at the step limit, an unstable simulation
ends its episode, prompt ids out of range are one-line errors), run on the
tabletop and the bimanual suite.
"""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from vla_grpo.envs.registry import make_suite

SCENE_SUITES = ("tabletop", "bimanual")


@pytest.fixture(scope="module", params=SCENE_SUITES)
def suite(request):
    return make_suite(request.param, image_size=32)


def prompts(tasks, states) -> TensorDict:
    n = len(tasks)
    return TensorDict({"task_index": torch.tensor(tasks).view(n, 1), "init_state_id": torch.tensor(states).view(n, 1),
                       "group_id": torch.arange(n).view(n, 1)}, batch_size=[n])


def test_a_chunk_crossing_the_step_limit_stops_at_it(suite):
    limit = suite.all_tasks()[0].max_steps
    env = suite.make_env(2, chunk_size=8)
    td = env.reset(prompts([0, 0], [0, 0]))
    env.sims[1].steps = limit - 3  # near the limit
    nxt = env.step(td.set("action", torch.zeros(2, 8, suite.action_dim)))["next"]
    assert [s.steps for s in env.sims] == [8, limit]
    assert nxt["truncated"].view(-1).tolist() == [False, True] and not nxt["terminated"].any()
    env.close()


def test_an_unstable_simulation_ends_its_episode_as_a_failure(suite):
    """MuJoCo resets a diverged sim to its default pose and goes on; the env ends that episode."""
    env = suite.make_env(2, chunk_size=4)
    td = env.reset(prompts([0, 0], [0, 0]))
    env.sims[0].data.qvel[:] = 1e30  # sub-env 0 blows up at its next physics step
    td["action"] = torch.zeros(2, 4, suite.action_dim)
    nxt = env.step(td)["next"]
    assert nxt["done"][0] and nxt["truncated"][0] and not nxt["success"][0]
    assert nxt["unstable"].view(-1).tolist() == [True, False] and not nxt["done"][1]
    # the next reset starts a clean episode (mj_resetData clears MuJoCo's warnings)
    td = env.reset(prompts([0, 0], [0, 0]))
    assert not td["done"].any() and not td["unstable"].any()
    td["action"] = torch.zeros(2, 4, suite.action_dim)
    nxt = env.step(td)["next"]
    assert not nxt["done"].any() and not nxt["unstable"].any()
    env.close()


def test_a_bad_prompt_is_a_one_line_error(suite):
    env = suite.make_env(1, chunk_size=2)
    with pytest.raises(ValueError, match=r"^task_index 99 is out of range"):
        env.reset(prompts([99], [0]))
    with pytest.raises(ValueError, match=r"init_state_id 1000 is out of range"):
        env.reset(prompts([0], [1000]))
    env.close()
