"""The bad-input catalogue: each bad config, YAML, CLI value, checkpoint, demo file, policy/suite
pair, device choice or run directory gives one ``error:`` line naming the file or field and what
was expected, exit code 2, and leaves what is on disk untouched."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from vla_grpo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "conf/toy.yaml")
FAST = ["--trainer.enable_progress_bar=false", "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
        "--trainer.max_steps=1"]
TOY_FAST = ["--model.groups_per_step=1", "--model.prompts_per_round=1"]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory) -> Path:
    """A real 1-step toy GRPO checkpoint."""
    run = tmp_path_factory.mktemp("toy")
    main(["fit", "-c", TOY, f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}", *FAST,
          *TOY_FAST,
          "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
          f"--trainer.callbacks.init_args.dirpath={run}/ckpt", "--trainer.callbacks.init_args.save_last=true"])
    return run / "ckpt" / "last.ckpt"


def _cases(tmp: Path, ckpt: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments after the subcommand, a needle the error line must hold)."""
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    truncated = tmp / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    no_state = tmp / "no_state.ckpt"
    torch.save({"epoch": 1}, no_state)
    bad_yaml = tmp / "bad_syntax.yaml"
    bad_yaml.write_text("model:\n  class_path: vla_grpo.module.GRPOModule\n   init_args: {group_size: 8\n")
    typo = tmp / "typo.yaml"
    typo.write_text(Path(TOY).read_text().replace("group_size: 8", "group_size: 8\n    grup_sise: 3"))
    wrong_type = tmp / "wrong_type.yaml"
    wrong_type.write_text(Path(TOY).read_text().replace("group_size: 8", "group_size: eight"))
    not_a_dir = tmp / "a_file"
    not_a_dir.write_text("x")
    bad_demos = tmp / "demos.hdf5"
    bad_demos.write_text("not hdf5")
    sft = str(ROOT / "conf/sft_tabletop.yaml")
    return {
        # config files and YAML
        "missing config file": (["fit", "-c", str(tmp / "nope.yaml")], "nope.yaml"),
        "YAML syntax error": (["fit", "-c", str(bad_yaml)], "bad_syntax.yaml"),
        "unknown key in YAML": (["fit", "-c", str(typo)], "grup_sise"),
        "wrong type in YAML": (["fit", "-c", str(wrong_type)], "group_size"),
        # CLI values
        "unknown option": (["fit", "-c", TOY, "--model.init_args.no_such_knob=3"], "no_such_knob"),
        "unknown loss class": (["fit", "-c", TOY, "--model.loss=vla_grpo.losses.NoSuchLoss"], "NoSuchLoss"),
        "group size 1": (["fit", "-c", TOY, "--model.group_size=1"], "`--model.group_size` must be >= 2"),
        "negative learning rate": (["fit", "-c", TOY, "--model.lr=-0.001"], "`--model.lr` must be > 0"),
        "zero temperature": (["fit", "-c", TOY, "--model.rollout_temperature=0"], "`--model.rollout_temperature`"),
        "misspelt sampler": (["fit", "-c", TOY, "--model.prompt_sampling=thompsn"], "`--model.prompt_sampling`"),
        "negative clip": (["fit", "-c", TOY, "--model.loss.init_args.clip_high=-0.5"], "clip_high"),
        "unknown train task": (["fit", "-c", TOY, "--model.train_tasks=[train/blue]"], "`--model.train_tasks`"),
        "no training states left": (["fit", "-c", TOY, "--model.train_first_state=500"], "train_first_state"),
        "zero workers": (["fit", "-c", TOY, "--model.num_workers=0"], "`--model.num_workers`"),
        "zero non-finite budget": (["fit", "-c", TOY, "--model.max_nonfinite_updates=0"], "max_nonfinite_updates"),
        "max_steps not a number": (["fit", "-c", TOY, "--trainer.max_steps=abc"], "max_steps"),
        # checkpoints
        "init_from missing": (["fit", "-c", TOY, "--model.init_from=/nonexistent.ckpt"], "/nonexistent.ckpt"),
        "init_from garbage": (["fit", "-c", TOY, f"--model.init_from={garbage}"], str(garbage)),
        "init_from truncated": (["fit", "-c", TOY, f"--model.init_from={truncated}"], str(truncated)),
        "init_from without weights": (["fit", "-c", TOY, f"--model.init_from={no_state}"], str(no_state)),
        "init_from another policy size": (["fit", "-c", TOY, f"--model.init_from={ckpt}",
                                           "--model.policy.init_args.hidden_dim=32"], "does not fit"),
        "ckpt_path missing": (["fit", "-c", TOY, "--ckpt_path=/nonexistent.ckpt"], "/nonexistent.ckpt"),
        "ckpt_path truncated": (["fit", "-c", TOY, f"--ckpt_path={truncated}"], str(truncated)),
        "validate, missing checkpoint": (["validate", "-c", TOY, "--ckpt_path=/nonexistent.ckpt"],
                                         "/nonexistent.ckpt"),
        # demo files
        "demo file not HDF5": (["fit", "-c", sft, f"--data.demo_file={bad_demos}"], str(bad_demos)),
        # policy / suite mismatch
        "policy action size vs suite": (["fit", "-c", TOY, "--model.policy.init_args.action_dim=3"], "action"),
        # devices and strategies
        "GPU on a CPU machine": (["fit", "-c", TOY, "--trainer.accelerator=gpu"], "accelerator='gpu'"),
        "unknown strategy": (["fit", "-c", TOY, "--trainer.strategy=no_such_strategy"], "no_such_strategy"),
        # run directories
        "run dir is a file": (["fit", "-c", TOY, f"--trainer.default_root_dir={not_a_dir}",
                               f"--trainer.logger.init_args.save_dir={not_a_dir}"], str(not_a_dir)),
    }




def pytest_generate_tests(metafunc):  # noqa: D103 (module-level parametrization by case name)
    if "case" in metafunc.fixturenames:
        names = ["missing config file", "YAML syntax error", "unknown key in YAML", "wrong type in YAML",
                 "unknown option", "unknown loss class", "group size 1", "negative learning rate",
                 "zero temperature", "misspelt sampler", "negative clip", "unknown train task",
                 "no training states left", "zero workers", "zero non-finite budget", "max_steps not a number",
                 "init_from missing", "init_from garbage", "init_from truncated", "init_from without weights",
                 "init_from another policy size", "ckpt_path missing", "ckpt_path truncated",
                 "validate, missing checkpoint", "demo file not HDF5", "policy action size vs suite",
                 "GPU on a CPU machine", "unknown strategy", "run dir is a file"]
        metafunc.parametrize("case", names)


def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, toy_ckpt, tmp_path, capsys):
    args, needle = _cases(tmp_path, toy_ckpt)[case]
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    (run / "ckpt" / "last.ckpt").write_bytes(toy_ckpt.read_bytes())  # an earlier run's checkpoint, to keep
    if not any(a.startswith("--trainer.default_root_dir") for a in args):
        args = [*args, f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}"]
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *FAST, *(TOY_FAST if TOY in args else [])])
    err = capsys.readouterr().err
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert exit_info.value.code == 2, err[-2000:]
    assert len(error_lines) == 1 and needle in error_lines[0], err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert _files(tmp_path) == before  # nothing written, nothing lost
