"""Tests particular to the tabletop suite (CPU, headless EGL): catalogue, spreads, wrist camera, grasp, experts.

What every suite owes (reset by id, step limit, masks, held-out splits) is tests/test_suite_contract.py's.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from tensordict import TensorDict
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
            assert t.instruction not in seen_text  # the tabletop's held-out tasks are asked in new words
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


# -- the env ---------------------------------------------------------------
def test_wrist_camera():
    suite = TabletopSuite(image_size=48, wrist_camera=True)
    env = suite.make_env(1, chunk_size=2)
    check_env_specs(env)
    td = env.reset(prompts([12], [0]))
    wrist, agent = td["observation", "wrist_image"], td["observation", "image"]
    assert wrist.shape == agent.shape == (1, 3, 48, 48) and not torch.equal(wrist, agent)
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


def test_a_chunk_runs_h_steps_and_an_expert_chunk_stops_at_the_step_of_success(suite):
    """A chunk runs H control steps (an idle sub-env's too); an expert's chunks stop at the very step
    the expert re-planned every step succeeds (a planned chunk replays exactly)."""
    task = suite.task_index("goal/lift_mug")
    env = suite.make_env(2, chunk_size=8)
    td = env.reset(prompts([task, task], [0, 0]))
    td["action"] = env.expert_chunk()
    td["action"][1] = 0.0  # sub-env 1 idles
    td = env.step(td)["next"]
    assert [s.steps for s in env.sims] == [8, 8]
    for _ in range(30):
        if td["done"][0]:
            break
        td = env.step(td.set("action", env.expert_chunk()))["next"]
    assert td["success"][0] and env.sims[0].steps == _expert_steps_one_by_one(suite, task, 0)
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
