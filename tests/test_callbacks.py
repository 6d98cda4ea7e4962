"""Eval callbacks on the toy suite: exact eval set, determinism, files, and removability."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import read_video
from vla_grpo.callbacks import EvalReport, SplitEvaluation, SplitResult
from vla_grpo.callbacks.report import read_csv
from vla_grpo.cli import main
from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.evaluation import EvalSpec
from vla_grpo.policies.tiny import TinyVLAPolicy
from vla_grpo.prompts import Prompt
from vla_grpo.rollout import GroupedRollout
from vla_grpo.tb import read_scalars

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "conf/toy.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--model.groups_per_step=2", "--model.prompts_per_round=2",
         "--model.eval_states_per_task=2"]


def _holder(num_envs: int = 8) -> SimpleNamespace:
    """What the callbacks read of a module: policy, suite, rollout, eval_spec."""
    torch.manual_seed(0)
    suite = ToyReachSuite(image_size=16, max_steps=24)
    policy = TinyVLAPolicy(action_dim=2, chunk_size=4, state_dim=6, image_size=16, hidden_dim=64, vocab_size=32)
    rollout = GroupedRollout(suite, num_envs=num_envs, chunk_size=4)
    return SimpleNamespace(policy=policy, suite=suite, rollout=rollout, eval_spec=EvalSpec(None, 3, num_envs))


def test_split_evaluation_runs_exactly_the_configured_tasks_states_and_splits():
    module = _holder()
    cb = SplitEvaluation(states_per_task=3, splits=["unseen_layout"])
    assert cb.eval_spec(module) == EvalSpec(["unseen_layout"], 3, 8)  # the module's spec, overridden
    episodes = cb.evaluate(module)

    unseen = [module.suite.task_index(t.name) for t in module.suite.tasks("unseen_layout")]
    expected = {Prompt(t, s) for t in unseen for s in range(3)}
    assert [it.prompt.state for it in episodes.items] == sorted(
        expected, key=lambda p: (unseen.index(p.task_index), p.init_state_id))
    assert {it.split for it in episodes.items} == {"unseen_layout"} and len(episodes.success) == 6
    assert episodes.batches == 1  # 6 episodes padded to one batch of 8
    result = SplitResult.from_task_counts(module.suite, episodes.task_counts(module.suite), 0, "fit")
    assert list(result.counts) == ["unseen_layout"]
    assert {task: eps for task, (_, eps) in result.counts["unseen_layout"].items()} == {"red": 3, "green": 3}
    assert set(result.metrics()) == {"eval/unseen_layout/success", "eval/unseen_layout/red",
                                     "eval/unseen_layout/green"}


def test_default_eval_set_follows_the_module_and_ranks_split_it():
    module = _holder()
    cb = SplitEvaluation()
    items = cb.eval_spec(module).items(module.suite)
    assert len(items) == 2 * 2 * 3  # 2 splits x 2 tasks x the module's 3 states
    shards = [cb.evaluate(module, items, rank=r, world_size=2).items for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(items) and not set(shards[0]) & set(shards[1])


def test_greedy_eval_is_deterministic():
    module = _holder(num_envs=8)
    cb = SplitEvaluation(states_per_task=4)
    first = cb.evaluate(module).success
    # a fresh simulator batch of another size: same episodes, same outcomes. The policy's logits
    # may round differently in the other batch shape; an outcome could only change where two
    # logits tie to ~1e-7 (an action on a bin boundary), which this seeded toy policy never meets
    module.rollout = GroupedRollout(module.suite, num_envs=16, chunk_size=4)
    second = cb.evaluate(module).success
    assert first == second
    assert module.policy.training  # eval mode is restored


def test_fit_and_validate_write_videos_plot_csv_and_per_task_metrics(tmp_path, capsys):
    main(["fit", "-c", str(TOY), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.val_check_interval=1", *QUIET])
    run = tmp_path / "tb" / "version_0"
    scalars = read_scalars(run)
    # step 0 by the callback itself, steps 1 and 2 from the val loop
    assert [s for s, _ in scalars["eval/unseen_layout/red"]] == [0, 1, 2]
    assert [s for s, _ in scalars["eval/train/success"]][0] == 0

    # an MP4 with the [video] extra, else a GIF (tests/test_video.py checks each)
    video = read_video(next((run / "eval/videos/step_000002").glob("unseen_layout.*")))
    assert video.ndim == 4 and video.shape[0] > 1 and video.shape[-1] == 3
    with Image.open(run / "eval/eval_curve.png") as png:
        assert png.format == "PNG" and png.size[0] > 600
    rows = list(csv.DictReader((run / "eval/eval_per_task.csv").open()))
    assert [r.step for r in read_csv(run / "eval/eval_per_task.csv")] == [0, 1, 2]
    assert {(r["step"], r["split"], r["task"]) for r in rows} == {
        (str(step), split, task) for step in (0, 1, 2) for split in ("train", "unseen_layout")
        for task in ("red", "green")}

    capsys.readouterr()
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    main(["validate", "-c", str(TOY), f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={ckpt}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", *QUIET])
    out = capsys.readouterr().out
    assert "greedy eval (validate" in out and "unseen_layout" in out and "green" in out


def test_a_config_without_the_callbacks_still_trains(tmp_path):
    config = yaml.safe_load(TOY.read_text())
    assert config["trainer"].pop("callbacks")
    path = tmp_path / "toy_no_callbacks.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "-c", str(path), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.limit_val_batches=0", *QUIET])
    assert [s for s, _ in read_scalars(tmp_path)["rollout/success_rate"]] == [0, 1]


def test_listeners_without_split_evaluation_warn_and_do_nothing(tmp_path):
    listeners = "[{class_path: vla_grpo.callbacks.EvalVideo}, {class_path: vla_grpo.callbacks.EvalReport}]"
    with pytest.warns(UserWarning, match="has no SplitEvaluation"):
        main(["fit", "-c", str(TOY), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.limit_val_batches=0",
              f"--trainer.callbacks={listeners}", *QUIET])
    assert not list(tmp_path.rglob("*.gif")) and not list(tmp_path.rglob("*.png"))


def test_report_history_survives_a_checkpoint():
    report = EvalReport()
    report.history = [SplitResult(step=3, stage="fit", counts={"train": {"red": (1, 2)}})]
    restored = EvalReport()
    restored.load_state_dict(report.state_dict())
    assert restored.history == report.history


@pytest.mark.skipif(find_spec("moviepy") is not None, reason="with moviepy the clip goes through add_video")
def test_a_gif_reaches_tensorboard_from_an_open_and_from_a_closed_writer(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vla_grpo.callbacks.sinks import log_video
    from vla_grpo.callbacks.video import write_gif

    clip = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    clip[1:, 2:6, 2:6] = 255
    path = tmp_path / "clip.gif"
    gif = write_gif(clip, path, fps=4.0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    assert log_video(logger, "eval_video/train", path, step=1, clip=clip, gif=gif, fps=4.0)
    logger.experiment.close()  # as after a finished fit: the writer has no open file any more
    assert log_video(logger, "eval_video/train", path, step=2, clip=clip, gif=gif, fps=4.0)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    images = events.Images("eval_video/train")
    assert [(e.step, e.encoded_image_string, e.width) for e in images] == [(1, gif, 8), (2, gif, 8)]


@pytest.mark.slow
def test_two_process_ddp_shards_the_eval_and_counts_every_episode_once(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "vla_grpo", "fit", "-c", str(TOY), "--trainer.devices=2",
           "--trainer.strategy=ddp", "--trainer.max_steps=1", "--trainer.val_check_interval=1",
           f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}", *QUIET,
           "--model.eval_states_per_task=3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = read_csv(tmp_path / "tb/version_0/eval/eval_per_task.csv")
    assert [r.step for r in history] == [0, 1]  # the callback's own eval, then the val loop's
    for result in history:  # each rank ran half; the all-reduced counts hold all 3 states per task
        assert list(result.counts) == ["train", "unseen_layout"]
        for tasks in result.counts.values():
            assert {task: eps for task, (_, eps) in tasks.items()} == {"red": 3, "green": 3}
