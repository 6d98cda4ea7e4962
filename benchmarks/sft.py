"""SFT on the tabletop suite: greedy success after behaviour cloning on N demos per task.

For each N, runs the SFT stage through the real CLI (``conf/sft_tabletop.yaml``,
eval during fit switched off), then evaluates ``last.ckpt`` greedily with the
same engine as GRPO's validation (``vla_grpo.evaluation.run_greedy`` on the
model's ``eval_spec``) on every split, and prints the ``docs/RESULTS.md`` table
plus per-task success.

    python benchmarks/sft.py --demos 1 20                  # ~25 min on 2 busy CPU cores
    python benchmarks/sft.py --demos 1 --max-steps 100 -- --model.lr=0.003
    python benchmarks/sft.py --demos 1 20 --skip-fit      # re-evaluate the runs' last.ckpt
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf/sft_tabletop.yaml"


def fit(demos: int, out: Path, max_steps: int, extra: list[str]) -> tuple[Path, float]:
    """One SFT run through the CLI; returns its ``last.ckpt`` and wall-clock seconds."""
    run = out / f"demos{demos}"
    args = [sys.executable, "-m", "vla_grpo", "fit", "-c", str(CONFIG), f"--data.demos_per_task={demos}",
            f"--trainer.max_steps={max_steps}", f"--trainer.default_root_dir={run}",
            f"--trainer.logger.init_args.save_dir={run}", f"--trainer.callbacks.init_args.dirpath={run}/ckpt",
            "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", *extra]
    start = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT)
    return run / "ckpt" / "last.ckpt", time.perf_counter() - start


def evaluate(ckpt: Path, extra: list[str]) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Greedy ``({split: success}, {task: success}, seen task names)`` of a checkpoint.

    The episodes are the ones SFT/GRPO validation runs: every split's tasks x
    initial states ``0..eval_states_per_task-1``.
    """
    from vla_grpo.cli import VLACLI
    from vla_grpo.evaluation import run_greedy
    from vla_grpo.init_from import load_policy_weights
    from vla_grpo.rollout import GroupedRollout

    model = VLACLI(args=["-c", str(CONFIG), "--trainer.logger=false", *extra], run=False).model
    load_policy_weights(model.policy, ckpt)
    suite = model.suite
    spec = model.eval_spec.override(splits=suite.splits)
    items = spec.items(suite)
    rollout = GroupedRollout(suite, num_envs=spec.batch_size, chunk_size=model.policy.chunk_size)
    try:
        with torch.no_grad():
            episodes = run_greedy(rollout, model.policy, items)
    finally:
        rollout.close()
    result = episodes.result(suite, full_names=True)
    per_task = {name: rate for rates in result.task_success().values() for name, rate in rates.items()}
    return result.split_success(), per_task, [t.name for t in suite.tasks("train")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=int, nargs="+", default=[1, 20], help="demos per task, one run each")
    parser.add_argument("--max-steps", type=int, default=1000, help="SFT optimizer steps per run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_sft")
    parser.add_argument("--skip-fit", action="store_true", help="only evaluate <out>/demos<N>/ckpt/last.ckpt")
    parser.add_argument("extra", nargs="*", help="more CLI overrides (after --)")
    args = parser.parse_args(argv)
    rows = []
    for n in args.demos:
        if args.skip_fit:
            ckpt, seconds = args.out / f"demos{n}" / "ckpt" / "last.ckpt", float("nan")
        else:
            ckpt, seconds = fit(n, args.out, args.max_steps, args.extra)
        splits, tasks, seen = evaluate(ckpt, args.extra)
        solved = sum(tasks[name] > 0 for name in seen)
        rows.append((n, seconds, splits, solved, len(seen)))
        print(f"\nper-task greedy success, {n} demos/task:")
        for name, rate in tasks.items():
            print(f"  {name:45s} {rate:.2f}")
    print("\n| demos/task | SFT wall time | seen (train) | paraphrase | unseen spatial | unseen object | unseen goal "
          "| seen tasks with >= 1 success |")
    print("|---|---|---|---|---|---|---|---|")
    for n, seconds, s, solved, total in rows:
        print(f"| {n} | {seconds / 60:.1f} min | {s['train']:.2f} | {s.get('paraphrase', float('nan')):.2f} "
              f"| {s['unseen_spatial']:.2f} | {s['unseen_object']:.2f} | {s['unseen_goal']:.2f} | {solved}/{total} |")


if __name__ == "__main__":
    main()
