"""Print the scripted experts' success per task.

    python -m vla_grpo.envs.tabletop                 # all tasks, all 50 states, chunk 8
    python -m vla_grpo.envs.tabletop --states 10 --chunk-size 1
"""
from __future__ import annotations

import argparse
import time

from .evaluate import expert_success
from .suite import TabletopSuite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scripted-expert success per tabletop task.")
    parser.add_argument("--states", type=int, default=None, help="initial states per task (default: all)")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--num-envs", type=int, default=16)
    args = parser.parse_args(argv)
    suite = TabletopSuite()
    n_states = args.states or suite.num_init_states
    start = time.perf_counter()
    tasks = range(len(suite.all_tasks()))
    results = expert_success(suite, tasks, range(n_states), chunk_size=args.chunk_size, num_envs=args.num_envs)
    print("| task | split | success | mean steps | max steps | limit |\n|---|---|---|---|---|---|")
    for t, spec in enumerate(suite.all_tasks()):
        r = results[t]
        print(f"| {spec.name} | {spec.split} | {sum(r.successes)}/{len(r.successes)} ({100 * r.rate:.0f}%) "
              f"| {sum(r.steps) / len(r.steps):.0f} | {max(r.steps)} | {spec.max_steps} |")
    total = sum(sum(r.successes) for r in results.values())
    episodes = sum(len(r.successes) for r in results.values())
    print(f"overall {total}/{episodes} ({100 * total / episodes:.1f}%) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
