"""LeRobotDataset v3.0 in and out: the layout written, the round trip into SFT windows, the key mapping, errors.

Needs the ``lerobot`` extra (``tox -e lerobot``); skipped without it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("datasets")
pytest.importorskip("av")
pq = pytest.importorskip("pyarrow.parquet")

from tests.helpers import run_cli_error  # noqa: E402
from vla_grpo.data import DemoDataModule  # noqa: E402
from vla_grpo.data.lerobot import decode_frames, local_replay, read_lerobot  # noqa: E402
from vla_grpo.envs.demos import main, read_demos, write_demos  # noqa: E402
from vla_grpo.envs.tabletop import TabletopSuite  # noqa: E402

SIZE = 64  # the tabletop configs' image size: the codec's loss is measured where SFT runs
TASKS = "goal/lift_mug,spatial/behind_plate,object/ketchup"
#: the codec's loss on these frames (H.264, yuv420p, crf 18, the writer's default): measured mean
#: 3.2 uint8 levels of |error|, 99th percentile 29 (colour edges: 4:2:0 halves the chroma
#: resolution), worst frame's mean 3.7, single worst pixel 168. The bounds leave ~25% headroom.
FRAME_MEAN_ABS, FRAME_P99_ABS, FRAME_WORST_MEAN = 4.0, 36, 4.6
#: yuv444p at crf 0 (--pix-fmt yuv444p --crf 0): only the RGB <-> YCbCr rounding is left
LOSSLESS_MAX_ABS = 2


@pytest.fixture(scope="module")
def suite() -> TabletopSuite:
    return TabletopSuite(image_size=SIZE)


@pytest.fixture(scope="module")
def hdf5(suite, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hdf5") / "demos.hdf5"
    write_demos(suite, path, TASKS, per_task=1, first_state=25, progress=False)
    return path


def _lerobot(out: Path, *extra: str) -> Path:
    assert main(["--out", str(out), "--format", "lerobot", "--tasks", TASKS, "--per-task", "1",
                 "--image-size", str(SIZE), "--first-state", "25", "--quiet", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory) -> Path:
    """The same scripted demos, recorded again by ``vla_grpo demos --format lerobot``."""
    return _lerobot(tmp_path_factory.mktemp("lerobot") / "demos")


def test_layout_is_lerobot_v3(lerobot, hdf5):
    info = json.loads((lerobot / "meta/info.json").read_text())
    lengths = [len(d) for d in read_demos(hdf5)]
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50 and info["robot_type"] == "tabletop"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(lengths), 3)
    features = info["features"]
    assert features["observation.images.agentview"]["dtype"] == "video"
    assert features["observation.images.agentview"]["shape"] == [SIZE, SIZE, 3]
    assert features["observation.images.agentview"]["info"]["video.codec"] == "h264"
    assert (features["observation.state"]["shape"], features["action"]["shape"]) == ([8], [7])
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):  # LeRobot's DEFAULT_FEATURES
        assert features[name]["shape"] == [1]
    rows = pq.read_table(lerobot / "data/chunk-000/file-000.parquet")
    assert set(rows.column_names) == set(features) - {"observation.images.agentview"}
    assert rows.schema.field("action").type.list_size == 7  # a (7,) feature: fixed-size list, as LeRobot's
    episodes = pq.read_table(lerobot / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == lengths
    video = "videos/observation.images.agentview"
    assert [e[f"{video}/from_timestamp"] for e in episodes] == pytest.approx(np.cumsum([0, *lengths[:-1]]) / 50)
    tasks = pq.read_table(lerobot / "meta/tasks.parquet").to_pandas()  # LeRobot's load_tasks: index "task"
    assert tasks.index.name == "task" and [e["tasks"][0] for e in episodes] == list(tasks.index)
    stats = json.loads((lerobot / "meta/stats.json").read_text())
    assert len(stats["action"]["q99"]) == 7 and np.array(stats["observation.images.agentview"]["mean"]).shape == (3, 1, 1)
    assert (lerobot / video / "chunk-000/file-000.mp4").is_file()


def _windows(suite, demo_file: Path, **kwargs):
    data = DemoDataModule(demos_per_task=1, demo_file=str(demo_file), tasks=TASKS, suite=suite, chunk_size=8,
                          **kwargs)
    data.setup("fit")
    return data


def test_round_trip_sft_reads_the_same_windows(suite, hdf5, lerobot):
    """Scripted demos -> LeRobot directory -> SFT windows == the HDF5 file's, frames within the codec's loss."""
    want, got = _windows(suite, hdf5), _windows(suite, lerobot)  # the directory is recognised by meta/info.json
    assert got.lerobot and not want.lerobot
    a, b = want.dataset, got.dataset
    assert torch.equal(a.chunks, b.chunks) and torch.equal(a.pad, b.pad)  # actions: exactly
    assert torch.equal(a.states, b.states) and torch.equal(a.task_index, b.task_index)
    assert a.instructions == b.instructions and torch.equal(a.instruction_id, b.instruction_id)
    for x, y in zip(want.action_stats, got.action_stats, strict=True):
        assert torch.equal(x, y)
    err = (a.images.int() - b.images.int()).abs().float()
    assert a.images.shape == b.images.shape
    assert err.mean() <= FRAME_MEAN_ABS, err.mean()
    assert err.flatten().quantile(0.99) <= FRAME_P99_ABS
    assert err.flatten(1).mean(1).max() <= FRAME_WORST_MEAN
    h5_demos, lr_demos = read_demos(hdf5), read_lerobot(lerobot, suite)
    for x, y in zip(h5_demos, lr_demos, strict=True):
        assert (x.task_name, x.init_state_id, x.instruction) == (y.task_name, y.init_state_id, y.instruction)
        np.testing.assert_array_equal(x.rewards, y.rewards)
        np.testing.assert_array_equal(x.dones, y.dones)


def test_full_colour_crf0_is_near_lossless_and_hdf5_converts(suite, hdf5, tmp_path):
    out = tmp_path / "converted"
    assert main(["--out", str(out), "--format", "lerobot", "--from", str(hdf5), "--pix-fmt", "yuv444p",
                 "--crf", "0", "--quiet"]) == 0
    for x, y in zip(read_demos(hdf5), read_lerobot(out, suite), strict=True):
        np.testing.assert_array_equal(x.actions, y.actions)
        assert np.abs(x.images.astype(int) - y.images.astype(int)).max() <= LOSSLESS_MAX_ABS


def test_key_mapping_picks_the_camera(suite, tmp_path):
    out = _lerobot(tmp_path / "wrist", "--wrist-camera", "--tasks", "goal/lift_mug")
    wrist_suite = TabletopSuite(image_size=SIZE, wrist_camera=True)
    plain = read_lerobot(out, wrist_suite, {"wrist": "observation.images.eye_in_hand"})[0]
    swapped = read_lerobot(out, wrist_suite, {"image": "observation.images.eye_in_hand",
                                              "wrist": "observation.images.agentview"})[0]
    np.testing.assert_array_equal(swapped.images, plain.wrist_images)
    np.testing.assert_array_equal(swapped.wrist_images, plain.images)
    assert not np.array_equal(plain.images, plain.wrist_images)


def test_upstream_cannot_read_a_local_directory(lerobot, tmp_path):
    """TorchRL 0.14.1 reads LeRobot's layout only from a hub snapshot; vla_grpo.data.lerobot.local_replay
    points that snapshot at the directory. When this test fails, upstream reads a local directory:
    drop local_replay's patch and build LeRobotExperienceReplay directly."""
    from torchrl.data.datasets import LeRobotExperienceReplay

    with pytest.raises(Exception):  # noqa: B017 - the hub's id check (a path is no repo id)
        LeRobotExperienceReplay(str(lerobot), root=tmp_path, download=True, decode_video=False)
    with pytest.raises(Exception):  # noqa: B017 - a LeRobot layout is not TorchRL's memory-mapped copy
        LeRobotExperienceReplay(lerobot.name, root=lerobot.parent, download=False, decode_video=False)


def test_torchcodec_decodes_like_pyav(lerobot):
    """Upstream decodes the VideoClipRef with torchcodec; where its wheel loads (a CUDA torch), it agrees with ours."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as err:  # noqa: BLE001 - OSError/ImportError: the wheel links libtorch_cuda and FFmpeg
        pytest.skip(f"torchcodec does not load here ({type(err).__name__})")
    with local_replay(lerobot, {"observation.images.agentview": "image"}) as replay:
        ref = replay[:].get("image")
        ours = torch.from_numpy(decode_frames(ref)).permute(0, 3, 1, 2)
        assert torch.equal(ref.decode(), ours)


def _copy_with(lerobot: Path, tmp_path: Path, edit) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(lerobot, bad)
    edit(bad)
    return bad


def _one_line(call, *needles: str) -> str:
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


def _scale_actions(root: Path, factor: float) -> None:
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    actions = np.stack(table.column("action").to_numpy(zero_copy_only=False)) * factor
    import pyarrow as pa

    column = pa.FixedSizeListArray.from_arrays(pa.array(actions.reshape(-1).astype(np.float32)), 7)
    pq.write_table(table.set_column(table.column_names.index("action"), "action", column), path)


def test_out_of_range_actions_are_one_line_naming_the_column(suite, lerobot, tmp_path):
    bad = _copy_with(lerobot, tmp_path, lambda root: _scale_actions(root, 3.0))
    _one_line(lambda: read_lerobot(bad, suite), str(bad), "'action'", "expected the suite's range [-1, 1]")


def _edit_info(root: Path, edit) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    edit(info["features"])
    (root / "meta/info.json").write_text(json.dumps(info))


def test_wrong_sizes_and_missing_keys_are_one_line(suite, lerobot, tmp_path):
    info = f"{lerobot}/meta/info.json"
    _one_line(lambda: read_lerobot(lerobot, TabletopSuite(image_size=32)), info,
              "features['observation.images.agentview'].shape is [64, 64, 3]; expected [32, 32, 3]")
    _one_line(lambda: read_lerobot(lerobot, suite, {"image": "observation.images.front"}), info,
              "no feature 'observation.images.front'", "image")
    _one_line(lambda: read_lerobot(lerobot, suite, {"camera": "x"}), "unknown roles ['camera']")
    five = _copy_with(lerobot, tmp_path, lambda root: _edit_info(root, lambda f: f["action"].update(shape=[5])))
    _one_line(lambda: read_lerobot(five, suite), "features['action'].shape is [5]; expected [7]")


def _rename_first_task(text: str):
    def rename(root: Path) -> None:
        import pandas as pd

        tasks = pd.read_parquet(root / "meta/tasks.parquet")
        tasks.index = pd.Index([text, *tasks.index[1:]], name="task")
        tasks.to_parquet(root / "meta/tasks.parquet")

    return rename


def test_unknown_or_held_out_task_string_is_one_line(suite, lerobot, tmp_path):
    bad = _copy_with(lerobot, tmp_path, _rename_first_task("juggle the mugs"))
    _one_line(lambda: read_lerobot(bad, suite), "meta/tasks.parquet", "'juggle the mugs'", "'tabletop'")
    shutil.rmtree(bad)
    task = suite.all_tasks()[suite.task_index(TASKS.split(",")[0])]
    bad = _copy_with(lerobot, tmp_path, _rename_first_task(task.held_out_phrasings[0]))
    _one_line(lambda: read_lerobot(bad, suite), "meta/tasks.parquet", "held-out phrasing of 'goal/lift_mug'")


def test_cli_reads_a_lerobot_dir_and_reports_a_bad_one_on_one_line(lerobot, tmp_path, capsys):
    from vla_grpo.cli import VLACLI

    keys = "{image: observation.images.agentview, state: observation.state, action: action}"
    cli = VLACLI(args=["-c", "conf/sft_tabletop.yaml", "--trainer.logger=false", f"--data.demo_file={lerobot}",
                       "--data.format=lerobot", f"--data.lerobot_keys={keys}"], run=False)
    assert cli.datamodule.lerobot and cli.datamodule.hparams.lerobot_keys["image"] == "observation.images.agentview"
    bad = _copy_with(lerobot, tmp_path, lambda root: _scale_actions(root, 3.0))
    err = run_cli_error(capsys, "fit", "-c", "conf/sft_tabletop.yaml", f"--data.demo_file={bad}",
                        f"--data.tasks={TASKS}", f"--trainer.default_root_dir={tmp_path}",
                        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=1",
                        f"--trainer.callbacks.init_args.dirpath={tmp_path}/ckpt", "--trainer.limit_val_batches=0")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(bad) in lines[0] and "'action'" in lines[0], err[-2000:]
    assert "Traceback" not in err


def test_writing_over_a_dataset_is_refused(lerobot, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _lerobot(lerobot)
    assert exit_info.value.code == 2 and "already holds a LeRobot dataset" in capsys.readouterr().err
