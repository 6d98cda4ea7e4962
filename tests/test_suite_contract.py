"""The suite contract (vla_grpo.envs.base), run over every registered suite (vla_grpo.envs.registry).

Each suite is built small (:data:`SMALL`); one that needs a package that is not
installed (LIBERO without the ``libero`` extra) is skipped, saying so. A new
suite in the registry gets these tests for free. What is particular to one
suite stays in its own test file.
"""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data.vla import validate_vla_tensordict
from torchrl.envs.utils import check_env_specs

from vla_grpo.envs.base import TRAIN_SPLIT
from vla_grpo.envs.registry import make_suite, suite_class, suite_names
from vla_grpo.prompts import PromptSampler, split_prompts

#: small, fast configurations (a suite missing here is built with its defaults)
SMALL = {
    "toy": {},
    "tabletop": {"image_size": 32},
    "bimanual": {"image_size": 32},
    "libero": {"suite": "libero_spatial", "unseen": ["lan", "swap"], "task_ids": [0], "image_size": 32,
               "num_init_states": 10},
}
CHUNK = 4
#: the greedy eval's initial states are 0..EVAL_STATES-1; training starts after them
EVAL_STATES = 2


@pytest.fixture(scope="module", params=suite_names())
def suite(request):
    try:
        suite_class(request.param)
    except ImportError as err:
        pytest.skip(str(err))
    return make_suite(request.param, **SMALL.get(request.param, {}))


def prompts(tasks: list[int], states: list[int]) -> TensorDict:
    n = len(tasks)
    return TensorDict({"task_index": torch.tensor(tasks).view(n, 1), "init_state_id": torch.tensor(states).view(n, 1),
                       "group_id": torch.arange(10, 10 + n).view(n, 1)}, batch_size=[n])


@pytest.fixture(scope="module")
def first_obs(suite) -> TensorDict:
    """Every task of the suite reset to initial state 0, in one env."""
    n = len(suite.all_tasks())
    env = suite.make_env(n, chunk_size=CHUNK)
    td = env.reset(prompts(list(range(n)), [0] * n))
    env.close()
    return td


def first_train_task(suite) -> int:
    return suite.task_index(suite.tasks(TRAIN_SPLIT)[0].name)


def observation(td: TensorDict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return td["observation", "image"][i], td["observation", "state"][i]


def same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# -- reset -----------------------------------------------------------------------------
def test_reset_speaks_the_vla_schema_for_every_task(suite, first_obs):
    td, tasks, s = first_obs, suite.all_tasks(), suite.image_size
    n = len(tasks)
    validate_vla_tensordict(td.clone().set("action", torch.zeros(n, CHUNK, suite.action_dim)))
    img, state = td["observation", "image"], td["observation", "state"]
    assert img.shape == (n, 3, s, s) and img.dtype == torch.uint8
    assert state.shape == (n, suite.state_dim) and state.dtype == torch.float32
    assert (img.float().flatten(1).std(1) > 5).all()  # a scene, not a blank frame
    assert list(td["language_instruction"]) == [t.instruction for t in tasks]
    assert td["task_index"].view(-1).tolist() == list(range(n)) and not td["init_state_id"].any()
    assert td["group_id"].view(-1).tolist() == list(range(10, 10 + n))
    assert td["success"].dtype == torch.bool and td["success"].shape == (n, 1) and not td["success"].any()
    assert not td["done"].any()


def test_torchrl_check_env_specs(suite):
    env = suite.make_env(2, chunk_size=CHUNK)
    check_env_specs(env)
    env.close()


def test_an_id_gives_the_same_first_frame_and_state_in_any_env_and_another_id_another_frame(suite):
    task = first_train_task(suite)
    env_a, env_b = suite.make_env(2, chunk_size=CHUNK), suite.make_env(1, chunk_size=CHUNK)
    first = env_a.reset(prompts([task, task], [1, 2]))
    ones, twos = observation(first, 0), observation(first, 1)
    env_a.step(first.clone().set("action", torch.rand(2, CHUNK, suite.action_dim) * 2 - 1))  # move things
    again = env_a.reset(prompts([task, task], [1, 2]))
    # exact: one simulator state rendered to uint8 by the same renderer is one computation
    assert same(observation(again, 0), ones) and same(observation(again, 1), twos)
    assert same(observation(env_b.reset(prompts([task], [2])), 0), twos)  # another env instance
    assert not torch.equal(ones[0], twos[0])
    env_a.close()
    env_b.close()


# -- stepping --------------------------------------------------------------------------
def test_an_episode_ends_at_its_step_limit_and_a_finished_sub_env_stays_frozen(suite):
    """Random actions: each episode ends by success or, truncated, exactly at its task's step limit."""
    task = min(suite.tasks(TRAIN_SPLIT), key=lambda t: t.max_steps)
    h = 7  # divides no suite's step limits: the last chunk is cut at the limit
    n, limit = 4, -(-task.max_steps // h)  # decisions to the step limit
    assert limit <= suite.max_decisions(h)
    env = suite.make_env(n, chunk_size=h)
    td = env.reset(prompts([suite.task_index(task.name)] * n, list(range(n))))
    gen = torch.Generator().manual_seed(0)
    ended, rewards = [None] * n, torch.zeros(n)
    for decision in range(1, limit + 1):
        td = env.step(td.set("action", torch.rand(n, h, suite.action_dim, generator=gen) * 2 - 1))["next"]
        assert td["success"].dtype == torch.bool and td["success"].shape == (n, 1)
        rewards += td["reward"].view(-1)
        ended = [e if e is not None or not td["done"][i] else decision for i, e in enumerate(ended)]
    assert td["done"].all()
    success, truncated = td["success"].view(-1), td["truncated"].view(-1)
    assert torch.equal(td["terminated"].view(-1), success) and torch.equal(truncated, ~success)
    assert torch.equal(rewards, success.float())  # a reward of 1 on the decision of success, else none
    assert truncated.any() and all(e == limit for e, t in zip(ended, truncated.tolist(), strict=True) if t)
    frozen = td.clone()
    after = env.step(td.set("action", torch.rand(n, h, suite.action_dim, generator=gen) * 2 - 1))["next"]
    assert same(observation(after, slice(None)), observation(frozen, slice(None)))
    assert after["done"].all() and not after["reward"].any()
    env.close()


def test_a_partial_step_mask_keeps_the_masked_sub_envs(suite):
    task = first_train_task(suite)
    env = suite.make_env(2, chunk_size=CHUNK)
    td = env.reset(prompts([task, task], [3, 3]))
    before = td.clone()
    td["action"] = torch.full((2, CHUNK, suite.action_dim), 0.5)
    td["_step"] = torch.tensor([True, False])
    nxt = env.step(td)["next"]
    assert same(observation(nxt, 1), observation(before, 1))
    assert not torch.equal(nxt["observation", "state"][0], before["observation", "state"][0])
    env.close()


def test_the_expert_solves_train_prompts(suite):
    tasks = [suite.task_index(t.name) for t in suite.tasks(TRAIN_SPLIT)[:3]]
    states = [EVAL_STATES, EVAL_STATES + 1]
    pairs = [(t, s) for t in tasks for s in states]
    env = suite.make_env(len(pairs), chunk_size=CHUNK)
    if not hasattr(env, "expert_chunk"):
        env.close()
        pytest.skip(f"{type(suite).__name__} has no scripted expert")
    td = env.reset(prompts([t for t, _ in pairs], [s for _, s in pairs]))
    rewards = torch.zeros(len(pairs))
    for _ in range(suite.max_decisions(CHUNK)):
        td = env.step(td.set("action", env.expert_chunk()))["next"]
        rewards += td["reward"].view(-1)
        if td["done"].all():
            break
    env.close()
    outcomes = [(suite.all_tasks()[t].name, s, ok) for (t, s), ok in zip(pairs, td["success"].view(-1).tolist(), strict=True)]
    assert td["success"].all() and not td["truncated"].any(), outcomes
    assert rewards.tolist() == [1.0] * len(pairs)


# -- held out of training --------------------------------------------------------------
def test_held_out_splits_are_kept_out_of_training(suite, first_obs):
    """Held-out tasks are not train tasks, held-out phrasings never a training one, and no held-out
    task shows the policy at reset what a train task shows it (instruction and first frame)."""
    tasks = suite.all_tasks()
    assert suite.splits[0] == TRAIN_SPLIT and len(suite.splits) >= 2
    train = [i for i, t in enumerate(tasks) if t.split == TRAIN_SPLIT]
    held = [i for i, t in enumerate(tasks) if t.split != TRAIN_SPLIT]
    assert not {tasks[i].name for i in train} & {tasks[i].name for i in held}
    trainable = {p for i in train for p in (*tasks[i].phrasings, tasks[i].instruction)}
    held_out = {p for t in tasks for p in t.held_out_phrasings}
    held_out |= {p for t in tasks if t.split == "paraphrase" for p in t.phrasings}
    assert not trainable & held_out
    images = first_obs["observation", "image"]
    for h in held:
        for t in train:
            assert tasks[h].instruction != tasks[t].instruction or not torch.equal(images[h], images[t]), (
                f"held-out {tasks[h].name} starts as train task {tasks[t].name} does")


def test_eval_states_are_never_training_prompts(suite):
    """The GRPO prompt pool (initial states from EVAL_STATES on) holds train tasks only, none at an eval
    state, and those initial states differ from the eval states' (first frame and state)."""
    pool = {p.state for p in PromptSampler(suite, first_state=EVAL_STATES).all_prompts}
    train = {suite.task_index(t.name) for t in suite.tasks(TRAIN_SPLIT)}
    assert pool and {p.task_index for p in pool} <= train and min(p.init_state_id for p in pool) == EVAL_STATES
    evals = {p.state for split in suite.splits for p in split_prompts(suite, split, EVAL_STATES)}
    assert not pool & evals
    task = first_train_task(suite)
    states = list(range(EVAL_STATES + 2))  # the eval states, then the first two training ones
    env = suite.make_env(len(states), chunk_size=CHUNK)
    td = env.reset(prompts([task] * len(states), states))
    env.close()
    for e in range(EVAL_STATES):
        for s in states[EVAL_STATES:]:
            assert not same(observation(td, e), observation(td, s)), (e, s)


def test_the_registry_names_every_suite_and_says_what_is_missing():
    assert suite_names()[:3] == ["toy", "tabletop", "bimanual"] and "libero" in suite_names()
    with pytest.raises(ValueError, match=r"^unknown suite 'tabeltop'; expected one of \['toy', "):
        suite_class("tabeltop")
    assert suite_class("toy").__name__ == "ToyReachSuite"
