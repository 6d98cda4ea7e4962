"""Tests of the demo writer/reader (robomimic HDF5 layout) on the tabletop suite."""
from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from vla_grpo.envs.demos import main, read_demos, record_episode, resolve_tasks, write_demos
from vla_grpo.envs.tabletop import TabletopSuite

TASKS = ["goal/lift_mug", "spatial/behind_plate"]


@pytest.fixture(scope="module")
def suite() -> TabletopSuite:
    return TabletopSuite(image_size=32)


@pytest.fixture(scope="module")
def demo_file(suite, tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "demos.hdf5"
    summary = write_demos(suite, path, TASKS, per_task=2, progress=False)
    assert summary == {"demos": 4, "skipped": 0}
    return path


def test_layout_is_robomimic_like(demo_file):
    with h5py.File(demo_file, "r") as f:
        demo = f["data/demo_0"]
        assert set(demo) == {"actions", "obs", "rewards", "dones"}
        assert set(demo["obs"]) == {"agentview_image", "state"}
        T = demo.attrs["num_samples"]
        assert demo["obs/agentview_image"].shape == (T, 32, 32, 3) and demo["obs/agentview_image"].dtype == np.uint8
        assert demo["actions"].shape == (T, 7)
        assert f["data"].attrs["total"] == sum(f["data"][k].attrs["num_samples"] for k in f["data"])


def test_round_trip_same_actions_and_frames(suite, demo_file):
    demos = read_demos(demo_file)
    assert [(d.task_name, d.init_state_id) for d in demos] == [
        (TASKS[0], 0), (TASKS[0], 1), (TASKS[1], 0), (TASKS[1], 1)]
    env = suite.make_env(1, chunk_size=1)
    for demo in (demos[0], demos[3]):
        assert demo.instruction == suite.all_tasks()[demo.task_index].instruction
        assert demo.dones[-1] == 1 and demo.dones[:-1].sum() == 0 and demo.rewards.sum() == 1
        again = record_episode(env, demo.task_index, demo.init_state_id)
        np.testing.assert_array_equal(again["actions"], demo.actions)
        np.testing.assert_array_equal(again["images"], demo.images)
        np.testing.assert_allclose(again["states"], demo.states)
    env.close()


def test_replaying_actions_reproduces_frames_and_success(suite, demo_file):
    demo = read_demos(demo_file)[2]
    env = suite.make_env(1, chunk_size=1)
    td = env.reset(TensorDict({"task_index": torch.tensor([[demo.task_index]]),
                               "init_state_id": torch.tensor([[demo.init_state_id]])}, batch_size=[1]))
    for t, action in enumerate(demo.actions):
        np.testing.assert_array_equal(td["observation", "image"][0].permute(1, 2, 0).numpy(), demo.images[t])
        td = env.step(td.set("action", torch.as_tensor(action).view(1, 1, 7)))["next"]
    assert td["success"].all()
    env.close()


def _one_line_error(path) -> str:
    with pytest.raises(ValueError) as err:
        read_demos(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_truncated_file_is_a_one_line_error(demo_file, tmp_path):
    data = demo_file.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: len(data) // 2])
    assert "cannot open as HDF5" in _one_line_error(cut)
    not_hdf5 = tmp_path / "notes.hdf5"
    not_hdf5.write_text("hello")
    assert "expected a demo file" in _one_line_error(not_hdf5)


def test_wrong_layout_is_a_one_line_error(tmp_path):
    flat = tmp_path / "flat.hdf5"
    with h5py.File(flat, "w") as f:
        f["actions"] = np.zeros((3, 7))
    assert "group 'data'" in _one_line_error(flat)

    bad_shape = tmp_path / "bad_shape.hdf5"
    with h5py.File(bad_shape, "w") as f:
        f["data/demo_0/actions"] = np.zeros((3, 7, 1))
    assert "data/demo_0/actions" in _one_line_error(bad_shape)

    no_images = tmp_path / "no_images.hdf5"
    with h5py.File(no_images, "w") as f:
        f["data/demo_0/actions"] = np.zeros((3, 7))
        f["data/demo_0/obs/state"] = np.zeros((3, 8))
    assert "data/demo_0/obs/agentview_image" in _one_line_error(no_images)

    short = tmp_path / "short.hdf5"
    with h5py.File(short, "w") as f:
        g = f.create_group("data/demo_0")
        g["actions"] = np.zeros((3, 7))
        g["obs/agentview_image"] = np.zeros((2, 8, 8, 3), np.uint8)
        g["obs/state"], g["rewards"], g["dones"] = np.zeros((3, 8)), np.zeros(3), np.zeros(3)
    assert "obs/agentview_image has 2 rows" in _one_line_error(short)


def test_resolve_tasks(suite):
    assert len(resolve_tasks(suite, "train")) == len(suite.tasks("train"))
    assert resolve_tasks(suite, "goal/lift_mug,3") == [suite.task_index("goal/lift_mug"), 3]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        resolve_tasks(suite, "nope")


def test_main_cli(tmp_path, capsys):
    out = tmp_path / "cli.hdf5"
    assert main(["--out", str(out), "--tasks", "goal/lift_bowl", "--per-task", "1", "--image-size", "24",
                 "--quiet", "--first-state", "5"]) == 0
    demos = read_demos(out)
    assert len(demos) == 1 and demos[0].init_state_id == 5 and demos[0].images.shape[1:] == (24, 24, 3)
    assert "wrote 1 demos" in capsys.readouterr().out


def test_lerobot_format_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as if the lerobot extra were not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "lerobot"), "--format", "lerobot", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pip install -e '.[lerobot]'" in err.splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x.hdf5"), "--from", "demos.hdf5"])  # --from converts to lerobot only
    assert "--from" in capsys.readouterr().err


def test_per_task_demo_directory_is_written_in_parallel_and_completed_task_by_task(suite, demo_file, tmp_path):
    """``format="per_task"``: one file per task, written by 2 expert processes; a deleted task's file (a run
    stopped before it) is written again alone, the others are kept as they were; the demos equal the
    single-file writer's (same experts, same states)."""
    from vla_grpo.data import DemoDataModule
    from vla_grpo.envs.demos import task_demo_path

    directory = tmp_path / "per_task"
    dm = DemoDataModule(demos_per_task=2, format="per_task", demo_file=str(directory), tasks=",".join(TASKS),
                        first_state=0, suite=suite, demo_workers=2)
    dm.prepare_data()
    files = [task_demo_path(directory, suite, t) for t in resolve_tasks(suite, TASKS)]
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in files)
    kept_mtime = files[0].stat().st_mtime_ns
    files[1].unlink()
    dm.prepare_data()
    assert files[1].is_file() and files[0].stat().st_mtime_ns == kept_mtime
    dm.setup("fit")
    got, want = dm.load_demos(), read_demos(demo_file)
    assert [(d.task_name, d.init_state_id) for d in got] == [(d.task_name, d.init_state_id) for d in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.images, b.images)


def test_per_task_format_rejects_a_file_and_names_a_missing_task(suite, demo_file, tmp_path):
    from vla_grpo.data import DemoDataModule
    from vla_grpo.envs.demos import DemoFileError

    with pytest.raises(DemoFileError, match="per_task` expects a directory"):
        DemoDataModule(format="per_task", demo_file=str(demo_file), suite=suite)
    dm = DemoDataModule(demos_per_task=1, format="per_task", demo_file=str(tmp_path), tasks=",".join(TASKS), suite=suite)
    with pytest.raises(DemoFileError, match=r"no per-task demo file goal\+lift_mug.hdf5 \(and 1 more\)"):
        dm.load_demos()
