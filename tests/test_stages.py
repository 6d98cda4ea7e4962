"""demos -> SFT -> GRPO in one `fit`: the SFT stage runs unless a finished checkpoint is there."""
from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli_error
from vla_grpo.cli import main

# conf/quickstart.yaml shrunk to seconds: one seen task, 16-px images, a 3-step SFT, 1 GRPO step
TINY_POLICY = ("{action_dim: 7, chunk_size: 4, state_dim: 8, image_size: 16, hidden_dim: 16, vocab_size: 32, "
               "channels: [8, 8, 8, 8], text_dim: 16}")
NO_BASE = "--model.policy.init_args.pretrained_path=null"  # a 16-px policy can't load the 64-px base


def _sft_args(tmp_path) -> str:
    args = ["--data.demos_per_task=1", "--data.tasks=goal/lift_mug", f"--data.cache_dir={tmp_path}/demos",
            "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
            "--model.suite.init_args.image_size=16", f"--model.policy.init_args={TINY_POLICY}", NO_BASE]
    return json.dumps(args)


def _grpo_args(tmp_path, *extra) -> list[str]:
    return ["fit", "-c", "conf/quickstart.yaml", "--trainer.max_steps=1", "--trainer.callbacks=[]",
            "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}/grpo", f"--trainer.logger.init_args.save_dir={tmp_path}/grpo",
            "--model.suite.init_args.image_size=16", f"--model.policy.init_args={TINY_POLICY}", NO_BASE,
            "--model.num_workers=1", "--model.prompts_per_round=1", "--model.groups_per_step=1",
            "--model.max_rollout_rounds=1", "--model.group_size=2", "--model.eval_states_per_task=1",
            f"--model.sft.init_args.root_dir={tmp_path}/sft", *extra]


def test_fit_runs_the_missing_sft_stage_then_reuses_it(tmp_path, capfd):
    ckpt = tmp_path / "sft" / "checkpoints" / "last.ckpt"
    main(_grpo_args(tmp_path, f"--model.sft.init_args.args={_sft_args(tmp_path)}"))
    out = capfd.readouterr().out
    assert "is missing, running" in out and ckpt.is_file()
    assert (tmp_path / "demos").is_dir()  # the demos were written by the SFT stage's DataModule
    stamp = ckpt.stat().st_mtime_ns
    main(_grpo_args(tmp_path, f"--model.sft.init_args.args={_sft_args(tmp_path)}"))
    assert "SFT stage: reusing" in capfd.readouterr().out and ckpt.stat().st_mtime_ns == stamp
    (tmp_path / "sft" / "sft_stage.done").unlink()  # as if the SFT run had been killed after an epoch
    main(_grpo_args(tmp_path, f"--model.sft.init_args.args={_sft_args(tmp_path)}"))
    out = capfd.readouterr().out
    assert "is from an unfinished SFT run, resuming it" in out and f"--ckpt_path={ckpt}" in out
    assert (tmp_path / "sft" / "sft_stage.done").is_file()


def test_failed_sft_stage_names_its_config(tmp_path):
    with pytest.raises(RuntimeError, match=r"the SFT fit of conf/sft_tabletop.yaml failed \(exit 2"):
        main(_grpo_args(tmp_path, "--model.sft.init_args.args=[--data.no_such_knob=1]"))
    assert not (tmp_path / "sft" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("--model.init_from=x.ckpt", "`--model.init_from` and `--model.sft` both name a starting point"),
        ("--model.sft.init_args.config=conf/nope.yaml", "no SFT config file at conf/nope.yaml"),
    ],
)
def test_bad_stage_config_is_one_line(override, needle, tmp_path, capsys):
    err = run_cli_error(capsys, *_grpo_args(tmp_path, override))
    assert needle in err and err.count("error:") == 1
