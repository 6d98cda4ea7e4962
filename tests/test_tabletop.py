"""Tests of the built-in tabletop suite (CPU, headless EGL): catalogue, env contract, experts."""
from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data.vla import validate_vla_tensordict
from torchrl.envs import ParallelEnv
from torchrl.envs.utils import check_env_specs

from vla_grpo.envs.base import TRAIN_SPLIT, Suite
from vla_grpo.envs.scene.evaluate import expert_success
from vla_grpo.envs.tabletop import TabletopSuite

FAMILIES = ("spatial", "object", "goal")


@pytest.fixture(scope="module")
def suite() -> TabletopSuite:
    return TabletopSuite()


def prompts(tasks, states, groups=None) -> TensorDict:
    n = len(tasks)
    groups = list(range(n)) if groups is None else groups
    return TensorDict(
        {"task_index": torch.tensor(tasks).view(n, 1), "init_state_id": torch.tensor(states).view(n, 1),
         "group_id": torch.tensor(groups).view(n, 1)},
        batch_size=[n],
    )


def clearance(kind_a, pos_a, kind_b, pos_b) -> float:
    """Free space between two objects' footprints (the basket is an axis-aligned square)."""
    if kind_b.shape == "basket":
        kind_a, pos_a, kind_b, pos_b = kind_b, pos_b, kind_a, pos_a
    d = np.abs(np.subtract(pos_b[:2], pos_a[:2]))
    if kind_a.shape == "basket":
        outside = np.maximum(d - kind_a.collision_half[0], 0.0)
        return float(np.hypot(*outside) - kind_b.footprint) if outside.all() else float(outside.max() - kind_b.footprint)
    return float(np.hypot(*d) - kind_a.footprint - kind_b.footprint)


# -- catalogue -------------------------------------------------------------
def test_catalogue_has_seen_and_unseen_tasks_per_family(suite):
    assert isinstance(suite, Suite)
    specs = suite.all_tasks()
    assert len({t.name for t in specs}) == len(specs)
    for family in FAMILIES:
        seen = [t for t in specs if t.family == family and t.split == TRAIN_SPLIT]
        unseen = suite.tasks(f"unseen_{family}")
        assert len(seen) >= 6 and len(unseen) >= 3
        assert {t.family for t in unseen} == {family}
    assert suite.splits == [TRAIN_SPLIT, "unseen_spatial", "unseen_object", "unseen_goal", "paraphrase"]
    assert all(t.num_init_states >= 50 and 100 <= t.max_steps <= 300 for t in specs)


def test_unseen_tasks_are_disjoint_from_seen(suite):
    seen = suite.tasks(TRAIN_SPLIT)
    seen_text = {t.instruction for t in seen}
    for split in ("unseen_spatial", "unseen_object", "unseen_goal", "paraphrase"):
        for t in suite.tasks(split):
            assert t.instruction not in seen_text and t.name not in {s.name for s in seen}
    index = {t.name: i for i, t in enumerate(suite.all_tasks())}
    kinds_seen = {o.kind.name for t in seen for o in suite.task(index[t.name]).objects}
    for t in suite.tasks("unseen_object"):  # new objects, never in a seen scene
        assert suite.task(index[t.name]).kind("target").name not in kinds_seen
    goals_seen = {suite.task(index[t.name]).goal for t in seen}
    for t in suite.tasks("unseen_goal"):  # new (verb, object, target) compositions
        assert suite.task(index[t.name]).goal not in goals_seen
    layouts_seen = {suite.task(index[t.name]).layout for t in seen}
    for t in suite.tasks("unseen_spatial"):  # new layouts
        assert suite.task(index[t.name]).layout not in layouts_seen


@pytest.mark.parametrize("spread", ["narrow", "wide"])
def test_init_states_are_fixed_and_collision_free(spread):
    suite = TabletopSuite(spread=spread, pretrain_catalogue=True)
    for i, spec in enumerate(suite.all_tasks()):
        task = suite.task(i)
        assert task.init_layout(7) == task.init_layout(7)
        assert task.init_layout(0) != task.init_layout(1)
        for k in range(spec.num_init_states):
            layout = task.init_layout(k)
            for a, b in itertools.combinations(task.objects, 2):
                gap = clearance(a.kind, layout[a.key], b.kind, layout[b.key])
                assert gap > 0.005, f"{spec.name} state {k}: {a.key} overlaps {b.key}"
    with pytest.raises(ValueError, match="init_state_id 50 is out of range"):
        suite.task(0).init_layout(50)


def test_narrow_spread_jitters_one_scene_per_task(suite):
    from vla_grpo.envs.tabletop.tasks import NARROW_JITTER, NARROW_YAW

    for i in range(len(suite.all_tasks())):
        task = suite.task(i)
        canonical = task.canonical_layout()
        for k in range(0, 50, 7):
            for key, (x, y, yaw) in task.init_layout(k).items():
                if key != "hand":
                    cx, cy, cyaw = canonical[key]
                    assert max(abs(x - cx), abs(y - cy)) <= NARROW_JITTER and abs(yaw - cyaw) <= NARROW_YAW
    goal = [suite.task(suite.task_index(t.name)) for t in suite.all_tasks() if t.family == "goal"]
    assert all(t.canonical_layout() == goal[0].canonical_layout() for t in goal)  # one scene, many goals
    spatial = [suite.task(suite.task_index(t.name)).canonical_layout() for t in suite.tasks(TRAIN_SPLIT)[:6]]
    assert len({tuple(c["plate"]) for c in spatial}) == 6
    wide = TabletopSuite(spread="wide")
    assert wide.name == "tabletop-wide" and wide.task(0).init_layout(3) != suite.task(0).init_layout(3)
    with pytest.raises(ValueError, match="`spread` must be one of"):
        TabletopSuite(spread="medium")


# -- env contract ----------------------------------------------------------
def test_every_task_builds_and_resets(suite):
    n = len(suite.all_tasks())
    env = suite.make_env(n, chunk_size=8)
    td = env.reset(prompts(list(range(n)), [0] * n))
    img = td["observation", "image"]
    assert img.shape == (n, 3, 128, 128) and img.dtype == torch.uint8
    assert (img.float().flatten(1).std(1) > 10).all()  # a real scene, not a blank frame
    assert td["observation", "state"].shape == (n, suite.state_dim)
    assert td["observation", "state"].dtype == torch.float32
    assert list(td["language_instruction"]) == [t.instruction for t in suite.all_tasks()]
    assert not td["success"].any() and not td["done"].any()
    assert td["group_id"].view(-1).tolist() == list(range(n))
    td["action"] = env.action_spec.zero()
    validate_vla_tensordict(td)
    env.close()


def test_torchrl_check_env_specs():
    for wrist in (False, True):
        env = TabletopSuite(image_size=32, wrist_camera=wrist).make_env(2, chunk_size=3)
        check_env_specs(env)
        env.close()


def test_same_init_state_gives_same_first_frame(suite):
    env_a, env_b = suite.make_env(2, chunk_size=4), suite.make_env(1, chunk_size=4)
    td = env_a.reset(prompts([3, 3], [11, 12]))
    first = td["observation", "image"].clone()
    env_a.step(td.set("action", env_a.action_spec.rand()))  # move things, then reset again
    again = env_a.reset(prompts([3, 3], [11, 12]))["observation", "image"]
    other = env_b.reset(prompts([3], [11]))["observation", "image"]
    assert torch.equal(first, again) and torch.equal(first[:1], other)
    assert not torch.equal(first[0], first[1])
    env_a.close()
    env_b.close()


def test_wrist_camera():
    suite = TabletopSuite(image_size=48, wrist_camera=True)
    env = suite.make_env(1, chunk_size=2)
    td = env.reset(prompts([12], [0]))
    wrist, agent = td["observation", "wrist_image"], td["observation", "image"]
    assert wrist.shape == agent.shape == (1, 3, 48, 48) and not torch.equal(wrist, agent)
    env.close()


def test_bad_prompt_is_a_one_line_error(suite):
    env = suite.make_env(1, chunk_size=2)
    with pytest.raises(ValueError, match=r"^task_index 99 is out of range"):
        env.reset(prompts([99], [0]))
    with pytest.raises(ValueError, match=r"init_state_id 1000 is out of range"):
        env.reset(prompts([0], [1000]))
    env.close()


def _expert_steps_one_by_one(suite, task: int, state: int) -> int:
    """Control steps the expert needs when re-planned every step (chunk size 1)."""
    env = suite.make_env(1, chunk_size=1)
    td = env.reset(prompts([task], [state]))
    while not td["done"].any():
        td = env.step(td.set("action", env.expert_chunk()))["next"]
    assert td["success"].all()
    steps = env.sims[0].steps
    env.close()
    return steps


def test_chunk_success_reward_and_freeze(suite):
    """A chunk runs H control steps, one frame; reward 1 once on success, then the env is frozen."""
    task = suite.task_index("goal/lift_mug")
    env = suite.make_env(2, chunk_size=8)
    td = env.reset(prompts([task, task], [0, 0]))
    td["action"] = env.expert_chunk()
    td["action"][1] = 0.0  # sub-env 1 idles
    nxt = env.step(td)["next"]
    assert [s.steps for s in env.sims] == [8, 8]
    rewards, successes = [], []
    for _ in range(30):
        td = nxt
        td["action"] = env.expert_chunk()
        nxt = env.step(td)["next"]
        rewards.append(float(nxt["reward"][0]))
        successes.append(bool(nxt["success"][0]))
    assert sum(rewards) == 1.0 and rewards[successes.index(True)] == 1.0
    assert nxt["terminated"][0] and nxt["done"][0] and not nxt["truncated"][0]
    steps, frame = env.sims[0].steps, nxt["observation", "image"][0].clone()
    assert steps == _expert_steps_one_by_one(suite, task, 0)  # stopped at the step of success
    for mask in (None, torch.tensor([False, True])):  # stepped anyway, or masked out by `_step`
        td = nxt.set("action", env.action_spec.rand())
        if mask is not None:
            td["_step"] = mask
        again = env.step(td)["next"]
        assert env.sims[0].steps == steps and torch.equal(again["observation", "image"][0], frame)
        assert again["reward"][0] == 0 and again["success"][0] and again["done"][0]
    env.close()


def test_partial_step_mask_keeps_masked_envs(suite):
    env = suite.make_env(2, chunk_size=4)
    td = env.reset(prompts([0, 1], [0, 0]))
    td["action"] = torch.ones(2, 4, 7) * 0.5
    td["_step"] = torch.tensor([True, False])
    frame = td["observation", "image"][1].clone()
    nxt = env.step(td)["next"]
    assert [s.steps for s in env.sims] == [4, 0]
    assert torch.equal(nxt["observation", "image"][1], frame)
    assert not torch.equal(nxt["observation", "image"][0], td["observation", "image"][0])
    env.close()


def test_truncation_at_the_step_limit(suite):
    task = suite.task_index("goal/lift_bowl")
    limit = suite.all_tasks()[task].max_steps
    env = suite.make_env(1, chunk_size=7)
    td = env.reset(prompts([task], [0]))
    decisions = 0
    while not td["done"].any():
        td["action"] = torch.zeros(1, 7, 7)
        td = env.step(td)["next"]
        decisions += 1
    assert decisions == -(-limit // 7) and env.sims[0].steps == limit
    assert td["truncated"][0] and not td["terminated"][0] and not td["success"][0]
    env.close()


@pytest.mark.parametrize("suite_name", ["tabletop", "bimanual"])
def test_an_unstable_simulation_ends_its_episode_as_a_failure(suite_name):
    """MuJoCo resets a diverged sim to its default pose and goes on; the env ends that episode."""
    from vla_grpo.envs.bimanual import BimanualSuite

    suite = TabletopSuite(image_size=32) if suite_name == "tabletop" else BimanualSuite(image_size=32)
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


@pytest.mark.parametrize("spread", ["narrow", "wide"])
def test_expert_succeeds_on_sampled_states_of_every_task(spread):
    suite = TabletopSuite(spread=spread)
    tasks = range(len(suite.all_tasks()))
    results = expert_success(suite, tasks, [0, 29], chunk_size=8, num_envs=27)
    failed = {suite.all_tasks()[t].name: r.successes for t, r in results.items() if not all(r.successes)}
    assert not failed


def test_grasp_needs_the_object_between_the_fingers(suite):
    env = suite.make_env(1, chunk_size=10)
    env.reset(prompts([suite.task_index("goal/lift_mug")], [0]))
    sim = env.sims[0]
    for _ in range(3):  # close the gripper in the air
        sim.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert sim.attached is None and sim.finger_q.min() > 0.04
    env.close()


def _worker_env(num_envs: int):
    return TabletopSuite(image_size=32).make_env(num_envs, chunk_size=4)


def test_parallel_env_carries_reset_keys():
    env = ParallelEnv(2, functools.partial(_worker_env, 2))
    try:
        p = prompts([0, 5, 12, 20], [3, 4, 5, 6], [7, 7, 9, 9]).view(2, 2)
        td = env.reset(p)
        for key in ("task_index", "init_state_id", "group_id"):
            assert torch.equal(td[key], p[key])
        assert td["observation", "image"].shape == (2, 2, 3, 32, 32)
        local = _worker_env(1)
        ref = local.reset(prompts([20], [6]))["observation", "image"][0]
        # same state, same frame across processes: exact, as one simulator state rendered by the same
        # MuJoCo renderer to uint8 is one computation (no batch of the policy's in between)
        assert torch.equal(td["observation", "image"][1, 1], ref)
        local.close()
        td["action"] = env.action_spec.rand()
        nxt = env.step(td)["next"]
        assert torch.equal(nxt["group_id"], p["group_id"]) and nxt["reward"].shape == (2, 2, 1)
    finally:
        env.close()


def test_seen_per_family_keeps_the_first_seen_tasks_and_every_unseen_one(suite):
    small = TabletopSuite(seen_per_family=2)
    assert small.name == "tabletop-2seen"
    full_seen = suite.tasks(TRAIN_SPLIT)
    want = [t.name for f in FAMILIES for t in [s for s in full_seen if s.family == f][:2]]
    assert [t.name for t in small.tasks(TRAIN_SPLIT)] == want
    for split in ("unseen_spatial", "unseen_object", "unseen_goal"):
        assert small.tasks(split) == suite.tasks(split)
    # the paraphrase split follows the seen tasks
    assert [t.name for t in small.tasks("paraphrase")] == [f"paraphrase/{name}" for name in want]
    i = small.task_index("goal/push_plate_front")
    assert small.task(i).init_layout(3) == suite.task(suite.task_index("goal/push_plate_front")).init_layout(3)
    # 6 per family keeps the whole split: the plain suite, under its name (so its demo cache is shared)
    whole = TabletopSuite(seen_per_family=6)
    assert whole.name == suite.name and [t.name for t in whole.tasks(TRAIN_SPLIT)] == [t.name for t in full_seen]
    with pytest.raises(ValueError, match="`seen_per_family` must be in 1..6"):
        TabletopSuite(seen_per_family=0)


def test_diagnose_sorts_episodes_by_what_the_hand_did(suite):
    from vla_grpo.diagnose import diagnose, outcome
    from vla_grpo.policies.tiny import TinyVLAPolicy

    task = suite.task_index("spatial/behind_mug")  # unseen_spatial
    env = suite.make_env(1, chunk_size=8)
    td = env.reset(prompts([task], [0]))
    sim = env.sims[0]
    start = {o.key: sim.pos(o.key) for o in sim.task.objects}
    assert outcome(sim, start, None, False) == "nothing"  # nothing done yet
    grasped = None
    while not td["done"].any():
        td = env.step(td.set("action", env.expert_chunk()))["next"]
        grasped = grasped or sim.attached
    assert grasped == sim.task.goal.obj and outcome(sim, start, grasped, bool(td["success"][0])) == "success"
    assert outcome(sim, start, grasped, False) == "right object, not placed"
    other = next(o.key for o in sim.task.objects if o.key != sim.task.goal.obj)
    assert outcome(sim, start, other, False).startswith(f"took {other}")
    env.close()
    # a real (untrained) policy: every episode is sorted into exactly one outcome
    policy = TinyVLAPolicy(action_dim=7, chunk_size=8, state_dim=suite.state_dim, image_size=suite.image_size,
                           hidden_dim=32)
    counts = diagnose(suite, policy, [task], 2, chunk_size=8, num_envs=2)
    assert sum(counts[task].values()) == 2
