"""Tests particular to the RoboTwin-style bimanual suite (CPU, headless EGL): catalogue, arms, experts, configs.

What every suite owes (reset by id, step limit, masks, held-out splits) is tests/test_suite_contract.py's.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from vla_grpo.envs.base import TRAIN_SPLIT, Suite
from vla_grpo.envs.bimanual import BimanualSuite
from vla_grpo.envs.bimanual.tasks import HORIZON, REACH_X
from vla_grpo.envs.scene.evaluate import expert_result, expert_success

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("lift_pot", "beat_block_hammer", "pick_dual_bottles", "place_phone_stand", "move_can_pot",
         "place_a2b_left", "place_empty_cup", "handover_mic", "handover_block", "stack_bowls_two")


@pytest.fixture(scope="module")
def suite() -> BimanualSuite:
    return BimanualSuite(image_size=64)


def prompts(tasks, states, groups=None) -> TensorDict:
    n = len(tasks)
    groups = list(range(n)) if groups is None else groups
    return TensorDict(
        {"task_index": torch.tensor(tasks).view(n, 1), "init_state_id": torch.tensor(states).view(n, 1),
         "group_id": torch.tensor(groups).view(n, 1)},
        batch_size=[n],
    )


# -- catalogue -------------------------------------------------------------
def test_catalogue_has_robotwin_tasks_seen_and_unseen_with_horizons(suite):
    assert isinstance(suite, Suite) and suite.action_dim == 14 and suite.state_dim == 16
    assert suite.splits == [TRAIN_SPLIT, "unseen"]
    seen, unseen = suite.tasks(TRAIN_SPLIT), suite.tasks("unseen")
    assert [t.name for t in seen] == list(TASKS)
    assert [t.name for t in unseen] == [f"unseen/{n}" for n in TASKS]
    bands = {"short": (100, 130), "medium": (150, 230), "long": (280, 320)}
    for t in suite.all_tasks():
        lo, hi = bands[t.family]
        assert lo <= t.max_steps <= hi and t.max_steps == HORIZON[t.family] and t.num_init_states == 50
    assert [t.family for t in seen] == ["short"] * 4 + ["medium"] * 4 + ["long"] * 2


def test_unseen_variants_recolour_and_move_objects(suite):
    for i in range(10):
        a, b = suite.task(i), suite.task(i + 10)
        assert a.spec.instruction == b.spec.instruction and a.goal == b.goal
        assert [o.kind.rgba for o in a.objects] != [o.kind.rgba for o in b.objects]
        ya = [p[1] for k, p in a.init_layout(3).items() if not k.endswith("hand")]
        yb = [p[1] for k, p in b.init_layout(3).items() if not k.endswith("hand")]
        assert max(ya) <= 0.0 < 0.01 <= min(yb)  # disjoint depth bands


def test_init_states_are_fixed_and_collision_free(suite):
    for i, spec in enumerate(suite.all_tasks()):
        task = suite.task(i)
        assert task.init_layout(7) == task.init_layout(7) and task.init_layout(0) != task.init_layout(1)
        for k in range(spec.num_init_states):
            layout = task.init_layout(k)
            for a, b in itertools.combinations(task.objects, 2):
                d = np.hypot(*np.subtract(layout[a.key][:2], layout[b.key][:2]))
                assert d > a.kind.footprint + b.kind.footprint, f"{spec.name} state {k}: {a.key} overlaps {b.key}"
    with pytest.raises(ValueError, match="init_state_id 50 is out of range"):
        suite.task(0).init_layout(50)


# -- the two arms ----------------------------------------------------------
def test_each_arm_reaches_only_its_side_and_the_middle(suite):
    env = suite.make_env(1, chunk_size=1)
    env.reset(prompts([suite.task_index("handover_block")], [0]))
    sim = env.sims[0]
    for _ in range(60):  # left arm pushes right, right arm pushes left
        sim.step(np.array([1.0, 0, 0, 0, 0, 0, -1, -1.0, 0, 0, 0, 0, 0, -1]))
    assert sim.tcp(0)[0] == pytest.approx(REACH_X["left"][1], abs=2e-3)
    assert sim.tcp(1)[0] == pytest.approx(REACH_X["right"][0], abs=2e-3)
    env.close()


def test_pot_needs_both_hands(suite):
    """One hand lifting the pot by its handle is not a success; the goal asks for both."""
    task = suite.task_index("lift_pot")
    env = suite.make_env(1, chunk_size=1)
    env.reset(prompts([task], [0]))
    sim, expert = env.sims[0], suite.expert(task)
    while sim.holders("pot") != {0} and sim.steps < 100:
        a = expert.act(sim)
        a[7:] = 0.0
        a[13] = -1.0  # the right arm stays open, where it is
        sim.step(a)
    assert sim.holders("pot") == {0}
    for _ in range(20):
        sim.step(np.array([0, 0, 1.0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, -1]))
    assert sim.bottom("pot") > 0.06 and not sim.success()
    env.close()


# -- the pretraining catalogue ------------------------------------------------
@pytest.fixture(scope="module")
def pretrain_suite() -> BimanualSuite:
    return BimanualSuite(image_size=32, pretrain_catalogue=True)


def test_pretrain_catalogue_is_new_compositions_of_the_suites_parts(suite, pretrain_suite):
    from vla_grpo.envs.bimanual.catalogue import PRETRAIN_SPLIT, goal_key

    tasks = pretrain_suite.all_tasks()
    n = len(suite.all_tasks())
    assert [t.name for t in tasks[:n]] == [t.name for t in suite.all_tasks()]  # suite indices unchanged
    assert pretrain_suite.name == "bimanual-pretrain" and suite.name == "bimanual"
    catalogue = [i for i, t in enumerate(tasks) if t.split == PRETRAIN_SPLIT]
    assert len(catalogue) >= 90 and catalogue == list(range(n, len(tasks)))
    texts = [tasks[i].instruction for i in catalogue]
    assert len(set(texts)) == len(texts) and len({tasks[i].name for i in catalogue}) == len(catalogue)
    held = {t.instruction for t in suite.all_tasks()}
    assert not held & set(texts)
    suite_goals = {goal_key(suite.task(i)) for i in range(n)}
    assert not suite_goals & {goal_key(pretrain_suite.task(i)) for i in catalogue}
    # only the pot and bowl templates re-use a suite goal's objects, in other colours named by the instruction
    recoloured = {i for i in catalogue if goal_key(pretrain_suite.task(i), colours=False)
                  in {goal_key(suite.task(j), colours=False) for j in range(n)}}
    assert {pretrain_suite.task(i).layout.name for i in recoloured} == {"lift_pot", "stack_bowls_two"}
    # every template, half the tasks in the unseen depth band, the unseen colours among the catalogue's
    assert {pretrain_suite.task(i).layout.name for i in catalogue} == {suite.task(i).layout.name for i in range(n)}
    assert sum(pretrain_suite.task(i).layout.unseen for i in catalogue) == len(catalogue) // 2
    unseen_colours = {o.kind.rgba for i in range(n) if suite.all_tasks()[i].split == "unseen"
                      for o in suite.task(i).objects}
    catalogue_colours = {o.kind.rgba for i in catalogue for o in pretrain_suite.task(i).objects}
    assert len(unseen_colours & catalogue_colours) >= 5
    # the objects an instruction names are the scene's ("place the can on the pad")
    for i in catalogue:
        task = pretrain_suite.task(i)
        for o in task.objects:
            assert o.kind.name in task.spec.instruction or task.layout.name == "stack_bowls_two"


def test_pretrain_catalogue_experts_succeed_on_one_task_per_template(pretrain_suite):
    first = {}
    for i, t in enumerate(pretrain_suite.all_tasks()):
        if t.split == "pretrain":
            first.setdefault(pretrain_suite.task(i).layout.name, i)
    results = expert_success(pretrain_suite, sorted(first.values()), [25], chunk_size=8, num_envs=10)
    assert all(r.successes == [True] for r in results.values()), results


# -- experts and demos -----------------------------------------------------
def test_expert_succeeds_on_sampled_states_of_every_task(suite):
    results = expert_success(suite, range(len(suite.all_tasks())), [0, 31], chunk_size=8, num_envs=20)
    failed = {suite.all_tasks()[t].name: r.successes for t, r in results.items() if not all(r.successes)}
    assert not failed
    for t, r in results.items():
        assert max(r.steps) < suite.all_tasks()[t].max_steps


@pytest.mark.slow
def test_expert_success_is_at_least_90_percent_on_20_states_per_task(suite):
    results = expert_success(suite, range(len(suite.all_tasks())), range(20), chunk_size=8, num_envs=20)
    rates = {task: rate for tasks in expert_result(suite, results).task_success().values()
             for task, rate in tasks.items()}
    assert min(rates.values()) >= 0.9, rates


def test_demos_cli_writes_bimanual_demos(tmp_path):
    from vla_grpo.cli import main
    from vla_grpo.envs.demos import read_demos

    out = tmp_path / "bimanual.hdf5"
    main(["demos", "--suite", "bimanual", "--out", str(out), "--tasks", "handover_mic,unseen/lift_pot",
          "--per-task", "1", "--image-size", "32", "--quiet"])
    demos = read_demos(out)
    assert [d.task_name for d in demos] == ["handover_mic", "unseen/lift_pot"]
    for d in demos:
        assert d.actions.shape[1] == 14 and d.states.shape[1] == 16 and d.images.shape[1:] == (32, 32, 3)
        assert d.rewards[-1] == 1.0 and d.dones[-1] == 1


# -- configs -----------------------------------------------------------------
FAST = ["--trainer.enable_progress_bar=false", "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0"]


@pytest.mark.parametrize("config", ["sft_robotwin.yaml", "robotwin.yaml"])
def test_configs_parse(config):
    from vla_grpo.cli import VLACLI

    cli = VLACLI(args=["-c", str(ROOT / "conf" / config), "--trainer.logger=false"], run=False)
    assert isinstance(cli.model.suite, BimanualSuite)
    assert cli.model.policy.action_dim == 14 and cli.model.policy.state_dim == 16


def test_sft_then_two_grpo_steps_from_the_cli(tmp_path):
    """conf/robotwin.yaml's SFT stage fits conf/sft_robotwin.yaml (2 steps, its own demos) into
    last.ckpt, then GRPO runs 2 steps from it; a second GRPO run reuses that checkpoint."""
    from vla_grpo.cli import main
    from vla_grpo.tb import read_scalars

    sft_root = tmp_path / "sft"
    sft_args = ["--trainer.max_steps=2", f"--data.cache_dir={tmp_path}/demos", "--data.tasks=handover_mic,lift_pot",
                "--data.demos_per_task=1", "--data.batch_size=8", "--trainer.log_every_n_steps=1", *FAST]

    def grpo(root):
        main(["fit", "-c", str(ROOT / "conf/robotwin.yaml"), f"--trainer.default_root_dir={root}",
              f"--trainer.logger.init_args.save_dir={root}", "--trainer.max_steps=2", "--trainer.callbacks=[]",
              f"--model.sft.init_args.root_dir={sft_root}", f"--model.sft.init_args.args={json.dumps(sft_args)}",
              "--model.group_size=2", "--model.groups_per_step=1", "--model.prompts_per_round=2",
              "--model.max_rollout_rounds=1", "--model.num_workers=1",
              "--model.dynamic_sampling=false", *FAST])  # a 2-step SFT rarely gives a mixed group: train on all

    grpo(tmp_path / "grpo")
    ckpt = sft_root / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (sft_root / "sft_stage.done").is_file()
    assert [s for s, _ in read_scalars(sft_root)["train/loss"]][-1] == 1  # the 2-step SFT, not the config's 3000
    scalars = read_scalars(tmp_path / "grpo")
    assert [s for s, _ in scalars["rollout/success_rate"]] == [0, 1]
    assert "train/loss_objective" in scalars
    mtime = ckpt.stat().st_mtime_ns
    grpo(tmp_path / "grpo2")
    assert ckpt.stat().st_mtime_ns == mtime  # reused, not refitted
