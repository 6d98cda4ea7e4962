"""The scripted LIBERO experts on the fast step and on robosuite's step: success, steps and state gap per episode.

For every task of a LIBERO suite and each given fixed state, the expert runs
closed loop (one action at a time) on two simulators of the task, one stepped by
:class:`vla_grpo.envs.libero.control.FastControlStep`, one by robosuite's own
``env.step`` (``LiberoSim(reference_step=True)``), each expert reading its own
simulator. States run one after another on the same two simulators (a reset
between, as the env's pooled simulators do). Prints per episode both outcomes,
the steps and the largest |qpos|, |qvel| gap, then the totals and the mean
``sim.step`` time of each (interleaved, so the load falls on both alike).

    python benchmarks/libero_step_equality.py --suite libero_spatial --states 0,1,2
    python benchmarks/libero_step_equality.py --suite libero_goal --states 0,1 --tasks 0,3,7
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _gap(a, b) -> float:
    return float(max(np.abs(a.data.qpos - b.data.qpos).max(), np.abs(a.data.qvel - b.data.qvel).max()))


def episode(fast, ref, expert, state: int, max_steps: int, clock: dict[str, float]) -> tuple[float, bool, bool]:
    """One expert episode from ``state`` on both simulators: (largest gap, fast success, reference success)."""
    fast.reset(state)
    ref.reset(state)
    worst = _gap(fast, ref)
    for _ in range(max_steps):
        for name, sim in (("fast", fast), ("ref", ref)):
            action = expert(sim, 1)[0]
            t0 = time.perf_counter()
            sim.step(action)
            clock[name] += time.perf_counter() - t0
        clock["steps"] += 1
        worst = max(worst, _gap(fast, ref))
        if fast.success() or ref.success():
            break
    return worst, fast.success(), ref.success()


def main(argv: list[str] | None = None) -> None:
    from vla_grpo.envs.libero import LiberoSuite
    from vla_grpo.envs.libero.sim import LiberoSim

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--states", default="0,1,2")
    parser.add_argument("--tasks", default=None, help="task indices of the suite (default: all)")
    args = parser.parse_args(argv)
    states = [int(s) for s in args.states.split(",")]
    tasks = None if args.tasks is None else [int(t) for t in args.tasks.split(",")]
    suite = LiberoSuite(args.suite, unseen=[], task_ids=tasks, image_size=32)
    clock = {"fast": 0.0, "ref": 0.0, "steps": 0}
    wins, worst_all = {"fast": 0, "ref": 0}, 0.0
    for index, task in enumerate(suite.all_tasks()):
        fast, ref = LiberoSim(suite.task(index)), LiberoSim(suite.task(index), reference_step=True)
        try:
            for state in states:
                worst, ok_fast, ok_ref = episode(fast, ref, suite.expert(index), state, task.max_steps, clock)
                wins["fast"] += ok_fast
                wins["ref"] += ok_ref
                worst_all = max(worst_all, worst)
                print(f"{task.name} state {state}: fast {ok_fast} ({fast.steps} steps), robosuite {ok_ref} "
                      f"({ref.steps} steps), max |dqpos|,|dqvel| {worst:.3g}", flush=True)
        finally:
            fast.close()
            ref.close()
    n = len(states) * len(suite.all_tasks())
    print(f"{args.suite} states {states}: expert success fast {wins['fast']}/{n}, robosuite step {wins['ref']}/{n}; "
          f"largest state gap {worst_all:.3g}; sim.step {1e3 * clock['fast'] / clock['steps']:.2f} ms fast vs "
          f"{1e3 * clock['ref'] / clock['steps']:.2f} ms robosuite's over {clock['steps']} steps")


if __name__ == "__main__":
    main()
