"""Scripted-expert success over tasks and initial states (batched)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from .suite import TabletopSuite


@dataclass
class ExpertResult:
    """Outcome of the expert on one task: successes and control steps of each episode."""

    successes: list[bool]
    steps: list[int]

    @property
    def rate(self) -> float:
        return sum(self.successes) / max(1, len(self.successes))


def _prompts(jobs: list[tuple[int, int]]) -> TensorDict:
    tasks = torch.tensor([[t] for t, _ in jobs])
    states = torch.tensor([[s] for _, s in jobs])
    return TensorDict({"task_index": tasks, "init_state_id": states,
                       "group_id": torch.zeros(len(jobs), 1, dtype=torch.int64)}, batch_size=[len(jobs)])


def episode_batches(suite: TabletopSuite, jobs: list[tuple[int, int]], *, chunk_size: int, num_envs: int):
    """Resets one env to each batch of ``(task, state)`` jobs, ``num_envs`` at a time, and yields
    ``(env, td, padded, batch)``: ``batch`` the real jobs (the first sub-envs), ``padded`` them plus
    copies of the last one filling the env (those sub-envs run too; ignore their results).
    Closes the env at the end."""
    env = suite.make_env(min(num_envs, len(jobs)), chunk_size=chunk_size)
    n = env.batch_size[0]
    try:
        for start in range(0, len(jobs), n):
            batch = jobs[start : start + n]
            padded = batch + [batch[-1]] * (n - len(batch))
            yield env, env.reset(_prompts(padded)), padded, batch
    finally:
        env.close()


def expert_success(
    suite: TabletopSuite,
    task_indices: Sequence[int],
    states: Sequence[int],
    *,
    chunk_size: int = 8,
    num_envs: int = 16,
) -> dict[int, ExpertResult]:
    """Run the expert on every (task, state) pair, ``num_envs`` episodes at a time."""
    jobs = [(t, s) for t in task_indices for s in states]
    results = {t: ExpertResult([], []) for t in task_indices}
    for env, td, _, batch in episode_batches(suite, jobs, chunk_size=chunk_size, num_envs=num_envs):
        for _ in range(suite.max_decisions(chunk_size)):
            td["action"] = env.expert_chunk()
            td = env.step(td)["next"]
            if td["done"].all():
                break
        for i, (t, _) in enumerate(batch):
            results[t].successes.append(bool(td["success"][i]))
            results[t].steps.append(env.sims[i].steps)
    return results


def expert_report_main(make_suite, argv: list[str] | None, *, description: str, num_envs: int,
                       catalogue: bool = True) -> None:
    """``python -m vla_grpo.envs.<suite>``: print the scripted experts' success per task as a table.

    ``make_suite(pretrain_catalogue)`` builds the suite. With ``catalogue`` (a suite with a
    pretraining catalogue), ``--pretrain`` reports the catalogue's tasks (the ``pretrain`` split)
    instead of the suite's own.
    """
    import argparse
    import time

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--states", type=int, default=None, help="initial states per task (default: all)")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--num-envs", type=int, default=num_envs)
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    if catalogue:
        parser.add_argument("--pretrain", action="store_true", help="the pretraining catalogue's tasks")
    args = parser.parse_args(argv)
    pretrain = bool(getattr(args, "pretrain", False))
    suite = make_suite(pretrain)
    n_states = args.states or suite.num_init_states
    names = [t.name for t in suite.all_tasks()]
    if args.tasks:
        tasks = [names.index(t) for t in args.tasks.split(",")]
    else:
        tasks = [i for i, t in enumerate(suite.all_tasks()) if (t.split == "pretrain") == pretrain]
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

