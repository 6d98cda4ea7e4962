"""Print the bimanual scripted experts' success per task.

    python -m vla_grpo.envs.bimanual                 # all 20 tasks, all 50 states, chunk 8
    python -m vla_grpo.envs.bimanual --states 20 --chunk-size 1
"""
from __future__ import annotations

import argparse
import time

from ..tabletop.evaluate import expert_success
from .suite import BimanualSuite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scripted-expert success per bimanual task.")
    parser.add_argument("--states", type=int, default=None, help="initial states per task (default: all)")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--num-envs", type=int, default=20)
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    args = parser.parse_args(argv)
    suite = BimanualSuite(image_size=64)
    n_states = args.states or suite.num_init_states
    names = [t.name for t in suite.all_tasks()]
    tasks = [names.index(t) for t in args.tasks.split(",")] if args.tasks else range(len(names))
    start = time.perf_counter()
    results = expert_success(suite, tasks, range(n_states), chunk_size=args.chunk_size, num_envs=args.num_envs)
    print("| task | split | success | mean steps | max steps | limit |\n|---|---|---|---|---|---|")
    for t in tasks:
        spec, r = suite.all_tasks()[t], results[t]
        print(f"| {spec.name} | {spec.split} | {sum(r.successes)}/{len(r.successes)} ({100 * r.rate:.0f}%) "
              f"| {sum(r.steps) / len(r.steps):.0f} | {max(r.steps)} | {spec.max_steps} |")
    total = sum(sum(r.successes) for r in results.values())
    episodes = sum(len(r.successes) for r in results.values())
    print(f"overall {total}/{episodes} ({100 * total / episodes:.1f}%) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
