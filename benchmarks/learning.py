"""The recipe and its ablations over seeds: does GRPO lift 1-demo SFT, and what matters?

Each (variant, seed) is one ``python -m vla_grpo fit -c conf/quickstart.yaml`` (demos ->
1-demo SFT -> GRPO -> greedy eval on every split at GRPO's first and last step),
with the variant's overrides. The SFT stage is per seed and shared by the GRPO
variants of that seed (its checkpoint is reused), so an ablation's difference is
the RL stage's alone.

Variants:

* ``full``: the recipe (dynamic sampling, clip 0.2/0.28, T=1.6, no KL);
* ``no_dynamic_sampling``: all-equal groups are trained on (advantage 0);
* ``symmetric_clip``: clip 0.2/0.2 (no clip-higher);
* ``temperature_1``: rollout temperature 1.0;
* ``thompson``: prompts by Thompson sampling over tasks instead of the success-aware weights;
* ``low_lr``: GRPO lr 1e-4 instead of the quickstart's 3e-4 (on the bimanual suite 3e-4 lowered success);
* ``half_sigma`` (``--policy flow`` only): the Flow-SDE noise level 0.15 instead of the config's 0.3;
* ``k6`` (``--policy flow`` only): 6 Euler steps per decision instead of the config's 4, at rollout and eval;
* ``wide_states``: GRPO rolls out from initial states 150..349 (200 per task) instead of 10..49 (40), so it
  sees 5x more layouts; states 50..149 (``benchmarks/heldout_states.py``'s held-out eval) stay unused;
* ``zero_demo``: GRPO from the untrained policy (SFT on 0 demos);
* ``hashed_tinyvla``: the whole recipe with TorchRL's TinyVLA (the instruction hashed to one
  of 256 embeddings, no pretrained base) in place of the reading policy (its own SFT stage);
* ``extra_demos``: no RL: SFT on ``--extra-demos`` demos per task instead, evaluated
  on the same episodes (compare on the unseen splits).

Writes ``<out>/learning.json`` (every number), ``<out>/learning_curve.png`` (rollout
success per GRPO step, mean and range over seeds) and prints the markdown tables
that ``docs/RESULTS.md`` quotes.

    python benchmarks/learning.py --seeds 0 1 2                         # everything (hours on 2 cores)
    python benchmarks/learning.py --seeds 0 --variants full zero_demo   # a subset
    python benchmarks/learning.py --report-only                         # re-read finished runs
    python benchmarks/learning.py --seeds 0 1 2 --variants full extra_demos --policy flow \
        --out runs/learning_flow                                        # the flow-matching policy (issue 30)
    python benchmarks/learning.py --seen-per-family 6 --sft-steps 2000 --max-steps 300 --val-every 100 \
        --variants low_lr extra_demos --arm-a low_lr --out runs/learning_all   # on all 18 seen tasks
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vla_grpo.tb import read_scalars  # noqa: E402

CONFIG = "conf/quickstart.yaml"
SFT_CONFIG = "conf/sft_tabletop.yaml"
#: --policy: the quickstart config and the SFT config of each policy family
POLICIES = {"token": ("conf/quickstart.yaml", "conf/sft_tabletop.yaml"),
            "flow": ("conf/quickstart_flow.yaml", "conf/sft_tabletop_flow.yaml")}
VARIANTS = {
    "full": [],
    "no_dynamic_sampling": ["--model.dynamic_sampling=false"],
    "symmetric_clip": ["--model.loss.init_args.clip_high=0.2"],
    "temperature_1": ["--model.rollout_temperature=1.0"],
    "thompson": ["--model.prompt_sampling=thompson"],
    "low_lr": ["--model.lr=0.0001"],
    "half_sigma": ["--model.policy.init_args.sigma=0.15"],
    "k6": ["--model.policy.init_args.num_steps=6"],
    "wide_states": ["--model.suite.init_args.num_init_states=350", "--model.train_first_state=150"],
    "zero_demo": [],
    "hashed_tinyvla": [],
    "extra_demos": [],
}
#: the policy of the hashed-instruction ablation, for its SFT stage and its GRPO run
HASHED_POLICY = ["--model.policy=vla_grpo.policies.TinyVLAPolicy", "--model.policy.init_args.hidden_dim=256",
                 "--model.policy.init_args.pretrained_path=null"]
#: its SFT learning rate (from scratch; the reading policy's SFT starts from the base at 1e-3)
HASHED_SFT = [*HASHED_POLICY, "--model.lr=0.002"]
#: variants that set a knob only the flow policy has
FLOW_ONLY = {"half_sigma", "k6"}
SPLITS = ("train", "paraphrase", "unseen_spatial", "unseen_object", "unseen_goal")


def _run(cmd: list[str], log: Path) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def _config_sft_args() -> list[str]:
    import yaml

    conf = yaml.safe_load((ROOT / CONFIG).read_text())
    return list(conf["model"]["init_args"]["sft"]["init_args"].get("args") or [])


def _sft_root(out: Path, demos: int, seed: int, tag: str = "") -> Path:
    return out / f"sft{demos}{tag}_seed{seed}"


def run_variant(variant: str, seed: int, out: Path, max_steps: int | None, extra_demos: int,
                seen_per_family: int | None = None, sft_steps: int | None = None, val_every: int | None = None) -> float:
    """Runs one (variant, seed); returns its wall-clock seconds. ``seen_per_family`` (6: the whole seen
    split, 18 tasks), ``sft_steps`` (of the 1-demo SFT stage) and ``val_every`` (GRPO's eval interval)
    replace the config's when given."""
    run = out / f"{variant}_seed{seed}"
    tasks = [] if seen_per_family is None else [f"--model.suite.init_args.seen_per_family={seen_per_family}"]
    if variant == "extra_demos":
        sft = _sft_root(out, extra_demos, seed)
        suite = [a for a in _config_sft_args() if a.startswith("--model.suite.")]  # the quickstart's task set
        cmd = [sys.executable, "-m", "vla_grpo", "fit", "-c", SFT_CONFIG, *suite, *tasks, f"--seed_everything={seed}",
               f"--data.demos_per_task={extra_demos}", f"--trainer.default_root_dir={sft}",
               f"--trainer.logger.init_args.save_dir={sft}", f"--trainer.callbacks.init_args.dirpath={sft}/checkpoints",
               "--trainer.enable_progress_bar=false"]
        return _run(cmd, run / "log.txt")
    demos = 0 if variant == "zero_demo" else 1
    hashed = variant == "hashed_tinyvla"
    # the config's own SFT-stage arguments (suite cut, steps, ...), then ours (later ones win)
    sft_args = [*_config_sft_args(), *tasks, f"--seed_everything={seed}", f"--data.demos_per_task={demos}",
                "--trainer.enable_progress_bar=false", *(HASHED_SFT if hashed else [])]
    if sft_steps is not None:
        sft_args.append(f"--trainer.max_steps={sft_steps}")
    sft_root = _sft_root(out, demos, seed, "_hashed" if hashed else "")
    cmd = [sys.executable, "-m", "vla_grpo", "fit", "-c", CONFIG, f"--seed_everything={seed}",
           f"--model.seed={seed}", f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
           f"--model.sft.init_args.root_dir={sft_root}",
           f"--model.sft.init_args.args={json.dumps(sft_args)}", "--trainer.enable_progress_bar=false",
           *tasks, *VARIANTS[variant], *(HASHED_POLICY if hashed else [])]
    if max_steps is not None:
        cmd.append(f"--trainer.max_steps={max_steps}")
    if val_every is not None:
        cmd.append(f"--trainer.val_check_interval={val_every}")
    return _run(cmd, run / "log.txt")


def read_run(variant: str, seed: int, out: Path, extra_demos: int, arm_a: str = "full") -> dict | None:
    """``{before: {split: success}, after: {...}, curve: [(step, rollout success)]}`` of a finished run."""
    tb = _sft_root(out, extra_demos, seed) if variant == "extra_demos" else out / f"{variant}_seed{seed}"
    if not tb.exists():
        return None
    scalars = read_scalars(tb)
    evals = {s: scalars.get(f"eval/{s}/success", []) for s in SPLITS}
    if not all(evals.values()):
        return None
    if variant != "extra_demos" and len(evals["train"]) < 2:  # GRPO evaluates at its start and end: still running
        return None
    before = {s: v[0][1] for s, v in evals.items()}
    # per task: eval/<split>/<family>/<task> -> (first, last)
    tasks = {k.removeprefix("eval/"): (v[0][1], v[-1][1]) for k, v in scalars.items()
             if k.startswith("eval/") and k.count("/") == 3 and v}
    if variant == "extra_demos":
        # arm (b) of the paper's Figure 4 starts where arm (a) does: its gain is measured from the
        # same seed's 1-demo SFT checkpoint (arm (a)'s step-0 eval, same episodes)
        start = read_run(arm_a, seed, out, extra_demos)
        if start is None:
            return None
        before = start["before"]
        tasks = {k: (start["tasks"][k][0], last) for k, (_, last) in tasks.items() if k in start["tasks"]}
    return {
        "before": before,
        "tasks": tasks,
        "after": {s: v[-1][1] for s, v in evals.items()},
        "eval_steps": [step for step, _ in evals["train"]],
        "eval_curve": evals["train"],
        "split_curves": evals,
        "curve": scalars.get("rollout/success_rate", []),
    }


def _arm_b_ran(out: Path, seed: int, extra_demos: int) -> bool:
    """The more-demos SFT reached its eval (``read_run`` also needs arm (a)'s start to report it)."""
    tb = _sft_root(out, extra_demos, seed)
    return tb.exists() and bool(read_scalars(tb).get("eval/train/success"))


def _mean_range(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} [{min(values):.2f}, {max(values):.2f}]"


def report(results: dict, seeds: list[int], out: Path, rl: str = "full") -> str:
    """The tables (``rl`` is arm (a): the reference of the paired table, the RL column of the per-task
    table and the curves of ``unseen_curves.png``), written beside ``learning.json`` and the plots."""
    lines = ["| variant | seeds | seen before | seen after | seen gain | paraphrase | unseen spatial | unseen object "
             "| unseen goal |", "|---|---|---|---|---|---|---|---|---|"]
    for variant, runs in results.items():
        runs = [r for r in runs.values() if r is not None]
        if not runs:
            continue
        gain = [r["after"]["train"] - r["before"]["train"] for r in runs]
        unseen = [
            _mean_range([r["after"][s] for r in runs]) + " (" + _mean_range(
                [r["after"][s] - r["before"][s] for r in runs]).split(" ")[0] + ")"
            for s in SPLITS[1:]
        ]
        lines.append(f"| {variant} | {len(runs)} | {_mean_range([r['before']['train'] for r in runs])} | "
                     f"{_mean_range([r['after']['train'] for r in runs])} | {_mean_range(gain)} | "
                     + " | ".join(unseen) + " |")
    table = "\n\n".join(t for t in ("\n".join(lines), paired_report(results, rl), per_task_report(results, rl)) if t)
    (out / "learning.json").write_text(json.dumps(results, indent=1))
    _plot(results, out / "learning_curve.png")
    _plot_splits(results, out / "unseen_curves.png", rl)
    return table


def _unseen_gain(run: dict) -> float:
    """Mean gain over the three unseen splits (from the run's start to its end)."""
    splits = [s for s in SPLITS if s.startswith("unseen")]
    return sum(run["after"][s] - run["before"][s] for s in splits) / len(splits)


def _interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its two-sided 95% Student-t interval (scipy comes with sentence-transformers, a dependency)."""
    from scipy import stats

    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    sem = stats.sem(values)
    half = stats.t.ppf(0.975, len(values) - 1) * sem if sem > 0 else 0.0
    return mean, mean - half, mean + half


def _seeds_to_separate(diffs: list[float]) -> str:
    """Paired seeds for a two-sided 5% test with 80% power to see the observed mean difference,
    taking the observed spread of the differences as true (normal approximation)."""
    import math
    import statistics

    if len(diffs) < 2:
        return "-"
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if mean == 0:
        return "never (no difference)"
    z = statistics.NormalDist().inv_cdf
    return str(max(2, math.ceil(((z(0.975) + z(0.8)) * sd / abs(mean)) ** 2)))


def paired_report(results: dict, reference: str = "full") -> str:
    """Each variant against the full recipe, paired by seed (same SFT start, same eval episodes):
    the 95% interval of the difference and the seeds it would take to separate it."""
    ref = {seed: r for seed, r in results.get(reference, {}).items() if r is not None}
    if len(ref) < 2:
        return ""
    fmt = "{:+.2f} [{:+.2f}, {:+.2f}]".format
    gain = _interval([r["after"]["train"] - r["before"]["train"] for r in ref.values()])
    unseen = _interval([_unseen_gain(r) for r in ref.values()])
    lines = [f"{reference} ({len(ref)} seeds): seen gain {fmt(*gain)}, mean unseen gain {fmt(*unseen)} (95% t-interval)",
             "", f"| variant | seeds paired with {reference} | seen after − {reference} | mean unseen gain − {reference} "
             "| seeds to separate (seen, unseen) |", "|---|---|---|---|---|"]
    for variant, runs in results.items():
        pairs = [(runs[s], ref[s]) for s in ref if variant != reference and runs.get(s) is not None]
        if len(pairs) < 2:
            continue
        seen = [a["after"]["train"] - b["after"]["train"] for a, b in pairs]
        gains = [_unseen_gain(a) - _unseen_gain(b) for a, b in pairs]
        lines.append(f"| {variant} | {len(pairs)} | {fmt(*_interval(seen))} | {fmt(*_interval(gains))} | "
                     f"{_seeds_to_separate(seen)}, {_seeds_to_separate(gains)} |")
    return "\n".join(lines)


def per_task_report(results: dict, rl: str = "full", demos: str = "extra_demos") -> str:
    """Each held-out task: success at the 1-demo start, after GRPO (``rl``) and after SFT on more
    demos (``demos``), mean over seeds: which unseen tasks move and which never do."""
    rl_runs = [r for r in results.get(rl, {}).values() if r is not None and "tasks" in r]
    demo_runs = [r for r in results.get(demos, {}).values() if r is not None and "tasks" in r]
    if not rl_runs:
        return ""
    def mean(xs: list[float]) -> str:
        return f"{sum(xs) / len(xs):.2f}" if xs else "-"

    lines = [f"| held-out task | 1-demo SFT | + GRPO ({len(rl_runs)} seeds) | more demos ({len(demo_runs)} seeds) |",
             "|---|---|---|---|"]
    for key in sorted(k for k in rl_runs[0]["tasks"] if not k.startswith("train/")):
        start = mean([r["tasks"][key][0] for r in rl_runs if key in r["tasks"]])
        after = mean([r["tasks"][key][1] for r in rl_runs if key in r["tasks"]])
        more = mean([r["tasks"][key][1] for r in demo_runs if key in r["tasks"]])
        lines.append(f"| {key} | {start} | {after} | {more} |")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, runs in results.items():
        runs = [r for r in runs.values() if r is not None]
        curves = [r["curve"] for r in runs if r["curve"]]
        if curves:
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            window = 5  # one step's rollout success is a few dozen episodes: smooth it
            smooth = [[sum(v for _, v in c[max(0, i - window + 1):i + 1]) / len(c[max(0, i - window + 1):i + 1])
                       for i in range(n)] for c in curves]
            cols = list(zip(*smooth, strict=True))
            ax.plot(steps, [sum(c) / len(c) for c in cols], label=f"{variant} ({len(curves)} seeds)")
            ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], alpha=0.15)
        evals = [r["eval_curve"] for r in runs if len(r.get("eval_curve", [])) > 1]
        if evals:
            n = min(len(e) for e in evals)
            steps = [e[0] for e in evals[0][:n]]
            cols = [[e[i][1] for e in evals] for i in range(n)]
            bx.errorbar(steps, [sum(c) / len(c) for c in cols],
                        yerr=[[sum(c) / len(c) - min(c) for c in cols], [max(c) - sum(c) / len(c) for c in cols]],
                        marker="o", capsize=3, label=f"{variant} ({len(evals)} seeds)")
    ax.set_title("training rollouts (T = rollout temperature)")
    ax.set_ylabel("success, 5-step mean")
    bx.set_title("greedy eval, seen tasks (states 0-9)")
    bx.set_ylabel("success (mean, min-max over seeds)")
    for a in (ax, bx):
        a.set_xlabel("GRPO step")
        a.set_ylim(0, 1)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_splits(results: dict, path: Path, rl: str = "full", demos: str = "extra_demos") -> None:
    """The paper's Figure 4 on our suite: each held-out split's greedy success against GRPO step (``rl``,
    mean and min-max over seeds), with the more-demos arm's (``demos``) end point as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = SPLITS[1:]
    fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3.6), sharey=True)
    rl_runs = [r for r in results.get(rl, {}).values() if r is not None]
    demo_runs = [r for r in results.get(demos, {}).values() if r is not None]
    for ax, split in zip(axes, splits, strict=True):
        curves = [r["split_curves"][split] for r in rl_runs if len(r.get("split_curves", {}).get(split, [])) > 1]
        if curves:
            n = min(len(c) for c in curves)
            steps = [c[i][0] for c in curves[:1] for i in range(n)]
            cols = [[c[i][1] for c in curves] for i in range(n)]
            mean = [sum(c) / len(c) for c in cols]
            ax.plot(steps, mean, marker="o", label=f"1-demo SFT + GRPO ({len(curves)} seeds)")
            ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], alpha=0.2)
        ends = [r["after"][split] for r in demo_runs]
        if ends:
            ax.axhline(sum(ends) / len(ends), color="tab:red", linestyle="--",
                       label=f"SFT on more demos ({len(ends)} seeds)")
            ax.axhspan(min(ends), max(ends), color="tab:red", alpha=0.08)
        ax.set_title(split)
        ax.set_xlabel("GRPO step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("greedy success")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-steps", type=int, default=None, help="GRPO steps (default: the config's)")
    parser.add_argument("--extra-demos", type=int, default=20, help="demos per task of the no-RL baseline")
    parser.add_argument("--seen-per-family", type=int, default=None, choices=range(1, 7), metavar="{1..6}",
                        help="seen tasks per family to train on (default: the config's 2; 6: all 18)")
    parser.add_argument("--sft-steps", type=int, default=None,
                        help="steps of the 1-demo SFT stage (default: the config's 1000, sized for 6 tasks)")
    parser.add_argument("--val-every", type=int, default=None, help="GRPO steps between evals (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/learning")
    parser.add_argument("--policy", default="token", choices=list(POLICIES),
                        help="the reading VLA's action head: tokens (conf/quickstart.yaml) or flow matching "
                             "(conf/quickstart_flow.yaml)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--arm-a", default="full", choices=[v for v in VARIANTS if v != "extra_demos"],
                        help="the RL variant that the paired, per-task and held-out-curve reports compare")
    args = parser.parse_args()
    global CONFIG, SFT_CONFIG
    CONFIG, SFT_CONFIG = POLICIES[args.policy]
    flow_only = sorted(FLOW_ONLY.intersection(args.variants))
    if args.policy != "flow" and flow_only:
        parser.error(f"--variants {' '.join(flow_only)}: a flow-policy knob (sigma, K); use it with --policy flow")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict | None]] = {}
    for variant in args.variants:
        results[variant] = {}
        for seed in args.seeds:
            done = read_run(variant, seed, args.out, args.extra_demos, args.arm_a)
            if done is None and not args.report_only and not (
                    variant == "extra_demos" and _arm_b_ran(args.out, seed, args.extra_demos)):
                seconds = run_variant(variant, seed, args.out, args.max_steps, args.extra_demos,
                                      args.seen_per_family, args.sft_steps, args.val_every)
                print(f"{variant} seed {seed}: {seconds / 60:.1f} min", flush=True)
                done = read_run(variant, seed, args.out, args.extra_demos, args.arm_a)
            results[variant][seed] = done
    print(report(results, args.seeds, args.out, args.arm_a))
    print(f"curves: {args.out / 'learning_curve.png'}, {args.out / 'unseen_curves.png'}")


if __name__ == "__main__":
    main()
