"""What a policy does on tabletop tasks: per task, which object it takes or moves, and how it fails.

A success rate says that a held-out task fails, not why. This runs a checkpoint's policy greedily
on the chosen tasks (initial states ``0..n-1``, the eval episodes) and sorts every episode by what
the hand did, read from the simulator's privileged state after each action chunk:

* ``success``;
* ``right object, not placed``: the first object grasped was the instructed one, the goal never held;
* ``took <object>``: the first object grasped was another one (e.g. the other red bowl);
* ``moved <object>``: nothing grasped, but an object was shoved more than 3 cm (push goals);
* ``nothing``: no grasp and nothing moved.

    python -m vla_grpo.diagnose runs/quickstart/grpo/tb/version_0/checkpoints/last.ckpt \
        -c conf/quickstart.yaml --splits unseen_spatial unseen_object unseen_goal --states 10
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

from vla_grpo.envs.base import TASK_INDEX_KEY
from vla_grpo.envs.scene.evaluate import play_jobs, step_until_done
from vla_grpo.envs.tabletop import TabletopSuite
from vla_grpo.rollout import ActivePolicyStep

MOVED_M = 0.03  # an object shoved this far (xy, metres) counts as moved


def _object_name(task, key: str) -> str:
    kind = task.kind(key).name
    return kind if kind == key else f"{key} ({kind})"


def outcome(sim, start: dict[str, np.ndarray], first_grasp: str | None, success: bool) -> str:
    """What one ended episode did: ``sim`` its simulator, ``start`` its objects' first positions."""
    task = sim.task
    if success:
        return "success"
    if first_grasp == task.goal.obj:
        return "right object, not placed"
    if first_grasp is not None:
        return f"took {_object_name(task, first_grasp)}"
    moved = {k: float(np.linalg.norm(sim.pos(k)[:2] - p[:2])) for k, p in start.items()}
    key = max(moved, key=moved.get) if moved else None
    if key is not None and moved[key] > MOVED_M:
        return "moved the instructed object, not far enough" if key == task.goal.obj \
            else f"moved {_object_name(task, key)}"
    return "nothing"


@torch.no_grad()
def diagnose(suite: TabletopSuite, policy, task_indices: list[int], states: int, *, chunk_size: int,
             num_envs: int = 16) -> dict[int, Counter]:
    """``{task_index: Counter(outcome)}`` over greedy episodes from initial states ``0..states-1``.

    The episodes run in this process (:func:`~vla_grpo.envs.scene.evaluate.play_jobs`), so the
    simulators' privileged state can be read after each action chunk.
    """
    tasks = suite.all_tasks()

    def play(env, td) -> list[str]:
        n = env.batch_size[0]
        instructions = [tasks[t].instruction for t in td[TASK_INDEX_KEY].view(-1).tolist()]
        start = [{o.key: sim.pos(o.key) for o in sim.task.objects} for sim in env.sims]
        grasp: list[str | None] = [None] * n

        def note_grasps() -> None:
            grasp[:] = [g or sim.attached for g, sim in zip(grasp, env.sims, strict=True)]

        td = step_until_done(env, td, ActivePolicyStep(policy, True, n, instructions),
                             suite.max_decisions(chunk_size), note_grasps)
        return [outcome(env.sims[i], start[i], grasp[i], bool(td["success"][i])) for i in range(n)]

    jobs = [(t, s) for t in task_indices for s in range(states)]
    out: dict[int, Counter] = {t: Counter() for t in task_indices}
    policy.eval()
    for (t, _), seen in zip(jobs, play_jobs(suite, jobs, play, chunk_size=chunk_size, num_envs=num_envs),
                            strict=True):
        out[t][seen] += 1
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a GRPO or SFT checkpoint (its policy weights are loaded strictly)")
    parser.add_argument("-c", "--config", required=True, help="the config that builds the checkpoint's policy and suite")
    parser.add_argument("--splits", nargs="+", default=None, help="splits to run (default: every split)")
    parser.add_argument("--tasks", nargs="+", default=None, help="task names (instead of --splits)")
    parser.add_argument("--states", type=int, default=10, help="initial states 0..n-1 per task")
    args = parser.parse_args(argv)
    from vla_grpo.cli import VLACLI
    from vla_grpo.init_from import load_policy_weights

    model = VLACLI(args=["-c", args.config, "--trainer.logger=false"], run=False).model
    suite, policy = model.suite, model.policy
    if not isinstance(suite, TabletopSuite):
        raise SystemExit(f"error: {args.config}: model.suite is {type(suite).__name__}, expected a TabletopSuite")
    load_policy_weights(policy, args.checkpoint)
    names = [t.name for t in suite.all_tasks()]
    if args.tasks:
        unknown = [t for t in args.tasks if t not in names]
        if unknown:
            raise SystemExit(f"error: --tasks: unknown task(s) {', '.join(unknown)}; known: {', '.join(names)}")
        indices = [names.index(t) for t in args.tasks]
    else:
        splits = args.splits or suite.splits
        indices = [i for i, t in enumerate(suite.all_tasks()) if t.split in splits]
    result = diagnose(suite, policy, indices, args.states, chunk_size=policy.chunk_size)
    print("| task | instruction | outcomes |\n|---|---|---|")
    for t, counts in result.items():
        row = ", ".join(f"{k} {v}" for k, v in counts.most_common())
        print(f"| {names[t]} | {suite.all_tasks()[t].instruction} | {row} |")


if __name__ == "__main__":
    main()
