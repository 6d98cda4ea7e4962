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


def _snapshot(root: Path) -> dict[str, str]:
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


def _bad_files(tmp: Path, ckpt: Path) -> dict[str, str]:
    """Writes the bad files the cases name; ``{placeholder: path}`` for :data:`CASES`."""
    files = {name: tmp / name for name in ("garbage.ckpt", "truncated.ckpt", "no_state.ckpt", "bad_syntax.yaml",
                                           "typo.yaml", "wrong_type.yaml", "a_file", "demos.hdf5")}
    files["garbage.ckpt"].write_bytes(b"not a checkpoint at all")
    files["truncated.ckpt"].write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save({"epoch": 1}, files["no_state.ckpt"])
    files["bad_syntax.yaml"].write_text("model:\n  class_path: vla_grpo.module.GRPOModule\n   init_args: {group_size: 8\n")
    files["typo.yaml"].write_text(Path(TOY).read_text().replace("group_size: 8", "group_size: 8\n    grup_sise: 3"))
    files["wrong_type.yaml"].write_text(Path(TOY).read_text().replace("group_size: 8", "group_size: eight"))
    files["a_file"].write_text("x")
    files["demos.hdf5"].write_text("not hdf5")
    return {"tmp": str(tmp), "ckpt": str(ckpt), **{k.split(".")[0]: str(v) for k, v in files.items()}}


SFT = str(ROOT / "conf/sft_tabletop.yaml")
#: name -> (arguments, a needle the error line must hold); ``{...}`` are the paths of :func:`_bad_files`
CASES: dict[str, tuple[list[str], str]] = {
    # config files and YAML
    "missing config file": (["fit", "-c", "{tmp}/nope.yaml"], "nope.yaml"),
    "YAML syntax error": (["fit", "-c", "{bad_syntax}"], "bad_syntax.yaml"),
    "unknown key in YAML": (["fit", "-c", "{typo}"], "grup_sise"),
    "wrong type in YAML": (["fit", "-c", "{wrong_type}"], "group_size"),
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
    "init_from garbage": (["fit", "-c", TOY, "--model.init_from={garbage}"], "{garbage}"),
    "init_from truncated": (["fit", "-c", TOY, "--model.init_from={truncated}"], "{truncated}"),
    "init_from without weights": (["fit", "-c", TOY, "--model.init_from={no_state}"], "{no_state}"),
    "init_from another policy size": (["fit", "-c", TOY, "--model.init_from={ckpt}",
                                       "--model.policy.init_args.hidden_dim=32"], "does not fit"),
    "ckpt_path missing": (["fit", "-c", TOY, "--ckpt_path=/nonexistent.ckpt"], "/nonexistent.ckpt"),
    "ckpt_path truncated": (["fit", "-c", TOY, "--ckpt_path={truncated}"], "{truncated}"),
    "validate, missing checkpoint": (["validate", "-c", TOY, "--ckpt_path=/nonexistent.ckpt"], "/nonexistent.ckpt"),
    # demo files
    "demo file not HDF5": (["fit", "-c", SFT, "--data.demo_file={demos}"], "{demos}"),
    "demo file a folder without meta/info.json": (["fit", "-c", SFT, "--data.demo_file={tmp}"], "meta/info.json"),
    "unknown demo format": (["fit", "-c", SFT, "--data.format=zarr"], "`--data.format`"),
    "lerobot format without a directory": (["fit", "-c", SFT, "--data.format=lerobot"], "`--data.demo_file`"),
    "unknown LeRobot key role": (["fit", "-c", SFT, "--data.lerobot_keys={{camera: x}}"], "['camera']"),
    # policy / suite mismatch
    "policy action size vs suite": (["fit", "-c", TOY, "--model.policy.init_args.action_dim=3"], "action"),
    # devices and strategies
    "GPU on a CPU machine": (["fit", "-c", TOY, "--trainer.accelerator=gpu"], "accelerator='gpu'"),
    "unknown strategy": (["fit", "-c", TOY, "--trainer.strategy=no_such_strategy"], "no_such_strategy"),
    "devices not a number": (["fit", "-c", TOY, "--trainer.devices=abc"], "devices='abc'"),
    "devices zero": (["fit", "-c", TOY, "--trainer.devices=0"], "devices='0'"),
    "num_nodes zero": (["fit", "-c", TOY, "--trainer.num_nodes=0"], "num_nodes"),
    # run directories
    "run dir is a file": (["fit", "-c", TOY, "--trainer.default_root_dir={a_file}",
                           "--trainer.logger.init_args.save_dir={a_file}"], "{a_file}"),
    "--ckpt_path a folder, not a sharded checkpoint": (["fit", "-c", TOY, "--ckpt_path={tmp}"], "not a sharded checkpoint"),
    # sysfs takes no new files, even from root (for whom permission bits don't bind)
    "run dir not writable": (["fit", "-c", TOY, "--trainer.default_root_dir=/sys/vla_grpo_run",
                              "--trainer.logger.init_args.save_dir=/sys/vla_grpo_run"], "cannot write in /sys"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, toy_ckpt, tmp_path, capsys):
    paths = _bad_files(tmp_path, toy_ckpt)
    args, needle = [a.format(**paths) for a in CASES[case][0]], CASES[case][1].format(**paths)
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    (run / "ckpt" / "last.ckpt").write_bytes(toy_ckpt.read_bytes())  # an earlier run's checkpoint, to keep
    if not any(a.startswith("--trainer.default_root_dir") for a in args):
        args = [*args, f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}"]
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *FAST, *(TOY_FAST if TOY in args else [])])
    err = capsys.readouterr().err
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert exit_info.value.code == 2, err[-2000:]
    assert len(error_lines) == 1 and needle in error_lines[0], err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert _snapshot(tmp_path) == before  # nothing written, nothing lost


def _heldout_states_benchmark():
    """benchmarks/heldout_states.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("heldout_states", Path(__file__).parents[1] / "benchmarks/heldout_states.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("argv, says", [
    (["--policy", "flow", "--suite", "libero_spatial", "--pairs", "a", "b"], "--suite libero_* takes --policy token"),
    (["--policy", "token", "--temperature", "0", "--pairs", "a", "b"], "--temperature must be > 0"),
    (["--policy", "token", "--pairs", "a"], "--pairs takes START END checkpoints in twos"),
    (["--policy", "token", "--batch", "0", "--pairs", "a", "b"], "--batch must be >= 1"),
    (["--policy", "token", "--num-steps", "6", "--pairs", "a", "b"], "--num-steps takes --policy flow"),
    (["--policy", "flow", "--num-steps", "0", "--pairs", "a", "b"], "--num-steps takes --policy flow and K >= 1"),
])
def test_heldout_states_benchmark_rejects_bad_arguments_before_building_anything(argv, says, capsys):
    bench = _heldout_states_benchmark()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2 and says in capsys.readouterr().err


def test_heldout_states_per_task_groups_each_episode_under_its_task():
    from vla_grpo.envs.tabletop import TabletopSuite
    from vla_grpo.prompts import Prompt

    bench = _heldout_states_benchmark()
    suite = TabletopSuite(image_size=64, seen_per_family=2, num_init_states=4)
    seen = [i for i, t in enumerate(suite.all_tasks()) if t.split == "train"]
    prompts = [Prompt(i, s) for i in seen for s in (2, 3)]  # as the benchmark builds them: task-major
    start = torch.tensor([1.0, 0.0] * len(seen))             # every task 1 of 2 at the start
    end = torch.tensor([1.0, 1.0] + [0.0, 0.0] * (len(seen) - 1))  # the first task 2 of 2, the others 0
    rows = bench._per_task(suite, prompts, start, end)
    assert [r[0] for r in rows] == [suite.all_tasks()[i].name for i in seen]
    assert [r[1] for r in rows] == [0.5] * len(seen)
    assert [r[2] for r in rows] == [1.0] + [0.0] * (len(seen) - 1)
