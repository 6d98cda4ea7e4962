"""Tests particular to the LIBERO suite (vla_grpo.envs.libero): catalogue, simulator pool, TorchRL's LiberoEnv, experts.

What every suite owes (reset by id, step limit, masks, held-out splits) is tests/test_suite_contract.py's.

Everything that builds a LIBERO simulator is slow-marked (``pytest -m slow``);
without ``pip install -e '.[libero]'`` the tests needing LIBERO skip, saying so.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from vla_grpo.envs.base import TRAIN_SPLIT
from vla_grpo.envs.libero import MAX_STEPS, LiberoSuite

NO_LIBERO = "LIBERO is not installed: pip install -e '.[libero]'"


@pytest.fixture(scope="module")
def suite() -> LiberoSuite:
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    return LiberoSuite("libero_spatial", task_ids=[0, 1], image_size=64, num_init_states=10)


def prompts(tasks, states) -> TensorDict:
    n = len(tasks)
    return TensorDict({"task_index": torch.tensor(tasks).view(n, 1), "init_state_id": torch.tensor(states).view(n, 1),
                       "group_id": torch.arange(n).view(n, 1)}, batch_size=[n])


# -- catalogue and errors --------------------------------------------------------
def test_catalogue_has_the_seen_suite_and_its_libero_pro_variants(suite):
    assert suite.splits == [TRAIN_SPLIT] + [f"libero_spatial_{v}" for v in ("lan", "object", "swap", "task")]
    seen, lan = suite.tasks(TRAIN_SPLIT), suite.tasks("libero_spatial_lan")
    assert [t.instruction for t in seen] == [
        "pick up the black bowl between the plate and the ramekin and place it on the plate",
        "pick up the black bowl next to the ramekin and place it on the plate"]
    assert all(a.instruction != b.instruction for a, b in zip(seen, lan, strict=True))  # reworded
    assert suite.tasks("libero_spatial_swap")[0].instruction == seen[0].instruction
    assert {t.max_steps for t in suite.all_tasks()} == {MAX_STEPS["libero_spatial"]} == {220}
    assert {t.num_init_states for t in suite.all_tasks()} == {10}


def test_bad_suite_or_variant_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"unknown LIBERO suite 'libero_spatail'; expected one of \[") as err:
        LiberoSuite("libero_spatail")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"`unseen` \['env'\] invalid for libero_goal"):
        LiberoSuite("libero_goal", unseen=["env"])


def test_missing_libero_is_a_one_line_error_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "libero", None)
    monkeypatch.setitem(sys.modules, "libero.libero", None)
    with pytest.raises(ImportError, match=r"needs LIBERO: pip install -e '\.\[libero\]'") as err:
        LiberoSuite("libero_spatial")
    assert "\n" not in str(err.value)


# -- the env ---------------------------------------------------------------------
@pytest.mark.slow
def test_reset_gives_the_fixed_init_state_deterministically(suite):
    env = suite.make_env(2, chunk_size=4)
    first = env.reset(prompts([0, 0], [3, 3]))
    assert torch.equal(first["observation", "image"][0], first["observation", "image"][1])
    env.reset(prompts([1, 0], [5, 7]))  # sub-env 0 hands its simulator back, takes task 1's
    again = env.reset(prompts([0, 0], [3, 3]))
    for key in (("observation", "image"), ("observation", "state")):
        assert torch.equal(again[key], first[key])
    other = env.reset(prompts([0, 0], [4, 4]))
    assert not torch.equal(other["observation", "image"][0], first["observation", "image"][0])
    # the fixed state is LIBERO's (flattened time, qpos, qvel): objects where it put them (x, y; they
    # drop a few cm to the table during the settling steps)
    sim = env.sims[0]
    stored = sim.init_states[4][1:]
    for adr in sim.model.jnt_qposadr[sim.model.jnt_type == 0]:  # free joints: the movable objects
        assert np.allclose(sim.data.qpos[adr : adr + 2], stored[adr : adr + 2], atol=1e-2)
    env.close()


@pytest.mark.slow
def test_torchrl_libero_env_cannot_read_this_packages_init_states():
    """TorchRL's LiberoEnv torch.loads ``<task>.pruned_init``; the package ships ``.pruned_init.npz``.

    When this starts failing, TorchRL reads the package's init states: see
    whether ``LiberoEnv`` now fits ``vla_grpo.envs.libero.env`` (the module docstring says what else is missing).
    """
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from torchrl.envs import LiberoEnv

    with pytest.raises(FileNotFoundError, match=r"\.pruned_init"):
        LiberoEnv("libero_spatial", task_id=0, camera_height=64, camera_width=64)


def test_the_libero_base_catalogue_holds_no_held_out_task():
    """conf/pretrain_libero.yaml's LIBERO-90 tasks: none has the instruction, the BDDL file or the BDDL
    problem (language aside) of a LIBERO-Spatial/-Object/-Goal/-10 task or of a LIBERO-PRO variant; the
    check itself finds LIBERO-90's five that do."""
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from pathlib import Path

    import yaml

    from vla_grpo.envs.libero.catalogue import held_out_twin, libero90_tasks

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "pretrain_libero.yaml").read_text())
    suite = config["model"]["init_args"]["suite"]["init_args"]
    assert suite["suite"] == "libero_90" and suite["unseen"] == []
    tasks = libero90_tasks()
    twins = {tasks[i].spec.name: held_out_twin(tasks[i]) for i in suite["task_ids"]}
    assert len(twins) >= 30 and not any(twins.values()), {k: v for k, v in twins.items() if v}
    found = {i for i, t in enumerate(tasks) if held_out_twin(t)}
    assert found == {6, 20, 39, 44, 77}
    assert held_out_twin(tasks[20]) == "libero_goal_swap/turn_on_the_stove"


# -- scripted experts and demos ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,tasks", [("libero_spatial", [0, 4]), ("libero_object", [0, 5])])
def test_expert_succeeds_on_a_sample_of_fixed_states(name, tasks):
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from vla_grpo.envs.scene.evaluate import expert_success

    suite = LiberoSuite(name, unseen=[], task_ids=tasks, image_size=32)
    results = expert_success(suite, range(len(tasks)), [0, 7], chunk_size=4, num_envs=2)
    assert all(all(r.successes) for r in results.values()), {t: r.successes for t, r in results.items()}


@pytest.mark.slow
def test_expert_opens_a_drawer_by_its_handle():
    """LIBERO-Goal's ``Open`` of the middle drawer: the gripper pitched to pinch the handle, then pulled."""
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from vla_grpo.envs.scene.evaluate import expert_success

    suite = LiberoSuite("libero_goal", unseen=[], task_ids=[0], image_size=32)
    assert suite.all_tasks()[0].name == "libero_goal/open_the_middle_drawer_of_the_cabinet"
    results = expert_success(suite, [0], [0, 5], chunk_size=4, num_envs=2)
    assert all(all(r.successes) for r in results.values()), {t: r.successes for t, r in results.items()}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["open_the_top_drawer_and_put_the_bowl_inside", "push_the_plate_to_the_front_of_the_stove"])
def test_expert_clears_a_drawers_way_and_carries_a_plate_by_its_rim(task):
    """LIBERO-Goal: the bowl under the top drawer's way dragged aside before the drawer opens, then put
    inside; the plate (wider than the gripper) taken by its rim and carried to the stove's front."""
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from vla_grpo.envs.scene.evaluate import expert_success

    suite = LiberoSuite("libero_goal", unseen=[], image_size=32)
    index = [t.name for t in suite.all_tasks()].index(f"libero_goal/{task}")
    results = expert_success(suite, [index], [0, 2], chunk_size=4, num_envs=2)
    assert all(all(r.successes) for r in results.values()), {t: r.successes for t, r in results.items()}


@pytest.mark.slow
@pytest.mark.parametrize("task", [
    "KITCHEN_SCENE10_close_the_top_drawer_of_the_cabinet",                                  # Close
    "KITCHEN_SCENE10_put_the_butter_at_the_back_in_the_top_drawer_of_the_cabinet_and_close_it",  # In, then Close
    "LIVING_ROOM_SCENE4_stack_the_left_bowl_on_the_right_bowl_and_place_them_in_the_tray",  # On, then In
    "LIVING_ROOM_SCENE5_put_the_red_mug_on_the_left_plate",                                 # a mug by its rim
])
def test_expert_closes_drawers_reaches_two_part_goals_and_takes_mugs_by_the_rim(task):
    """LIBERO-90 goals the expert gained for the LIBERO base's catalogue (issue 31): a drawer pushed shut by
    its handle, a conjunction's parts reached one after the other, a mug (its handle makes it wider than
    the gripper every way) carried by its rim."""
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from vla_grpo.envs.scene.evaluate import expert_success

    suite = LiberoSuite("libero_90", unseen=[], image_size=32)
    index = [t.name for t in suite.all_tasks()].index(f"libero_90/{task}")
    results = expert_success(suite, [index], [0, 3], chunk_size=4, num_envs=2)
    assert all(all(r.successes) for r in results.values()), {t: r.successes for t, r in results.items()}


@pytest.mark.slow
def test_demos_command_writes_libero_demos(tmp_path):
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from vla_grpo.cli import main
    from vla_grpo.envs.demos import read_demos

    out = tmp_path / "spatial.hdf5"
    name = "libero_spatial/pick_up_the_black_bowl_from_table_center_and_place_it_on_the_plate"
    main(["demos", "--suite", "libero_spatial", "--out", str(out), "--tasks", name, "--image-size", "32", "--quiet"])
    (demo,) = read_demos(out)
    assert demo.task_name == name and demo.instruction.startswith("pick up the black bowl from table center")
    assert demo.actions.shape[1] == 7 and demo.images.shape[1:] == (32, 32, 3) and demo.rewards[-1] == 1.0


# -- configs -------------------------------------------------------------------------
#: the CPU smoke overrides documented in each conf/libero_*.yaml
CPU_SMOKE = [
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true", "--trainer.max_steps=2",
    "--trainer.callbacks=[]", "--model.sft=null", "--model.suite.init_args.task_ids=[0]",
    "--model.suite.init_args.image_size=64", "--model.policy.init_args.image_size=64",
    "--model.policy.init_args.patch_size=16", "--model.policy.init_args.vision_hidden=32",
    "--model.policy.init_args.text_hidden=64", "--model.policy.init_args.layers=1", "--model.policy.init_args.heads=2",
    "--model.policy.init_args.bf16=false", "--model.num_workers=1", "--model.group_size=2",
    "--model.groups_per_step=1", "--model.prompts_per_round=1", "--model.max_rollout_rounds=1",
    "--model.dynamic_sampling=false", "--model.eval_states_per_task=1",
]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["libero_spatial.yaml", "libero_object.yaml", "libero_goal.yaml", "libero_10.yaml"])
def test_two_grpo_steps_with_the_configs_cpu_overrides(config, tmp_path):
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from pathlib import Path

    from vla_grpo.cli import main
    from vla_grpo.tb import read_scalars

    path = Path(__file__).resolve().parents[1] / "conf" / config
    documented = path.read_text()
    assert all(arg in documented for arg in CPU_SMOKE), "the file's CPU smoke comment and CPU_SMOKE differ"
    main(["fit", "-c", str(path), *CPU_SMOKE, f"--trainer.default_root_dir={tmp_path}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
          "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0"])
    assert [s for s, _ in read_scalars(tmp_path)["rollout/success_rate"]] == [0, 1]
