"""LIBERO-90's scripted-expert coverage: per task, the expert's success over LIBERO's fixed states, or the
goal it has no skill for (issue 31: the pretraining catalogue is the tasks at >= 80%).

Needs the ``[libero]`` extra. One JSON line per task as it finishes (so a stopped run keeps what it
measured), then a summary; ``--shard i/n`` runs every n-th task from the i-th (one process per core)::

    python benchmarks/libero90_coverage.py --states 2 --shard 0/2 > cov0.jsonl &
    python benchmarks/libero90_coverage.py --states 2 --shard 1/2 > cov1.jsonl
    python benchmarks/libero90_coverage.py --summary cov0.jsonl cov1.jsonl
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(states: int, shard: tuple[int, int]) -> None:
    from envs.libero.suite import LiberoSuite
    from envs.scene.evaluate import expert_success

    suite = LiberoSuite("libero_90", unseen=[], image_size=64)
    specs = suite.all_tasks()
    first, every = shard
    tasks = [i for i, t in enumerate(specs) if t.split == "train"][first::every]
    for i in tasks:
        start = time.perf_counter()
        try:
            res = expert_success(suite, [i], range(states), chunk_size=1, num_envs=1)[i]
            row = {"success": list(res.successes), "steps": list(res.steps)}
        except NotImplementedError as err:  # the expert has no skill for this goal
            row = {"missing": str(err).split(" (")[0]}
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({"task": specs[i].name, **row}), flush=True)


def _kind(message: str) -> str:
    """``"close"`` or ``"in + close"``: the predicates of the goal the expert has no skill for (or the
    expert's own reason, e.g. an object wider than the gripper every way)."""
    import ast
    import re

    if "[" not in message:
        return re.sub(r"^\w+_\d+ ", "<object> ", message)
    goal = ast.literal_eval(message[message.index("["):])
    parts = goal if isinstance(goal[0], list) else [goal]
    return " + ".join(p[0] for p in parts)


def summary(files: list[Path]) -> None:
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.startswith("{")]
    ran = [r for r in rows if "success" in r]
    at80 = [r for r in ran if sum(r["success"]) >= 0.8 * len(r["success"])]
    missing = collections.Counter(_kind(r["missing"]) for r in rows if "missing" in r)
    print(f"{len(rows)} tasks: {len(ran)} have a skill, {len(at80)} succeed on >= 80% of their states, "
          f"{len(rows) - len(ran)} lack one")
    for kind, n in missing.most_common():
        print(f"  {n:3d} tasks lack: {kind}")
    for r in sorted(ran, key=lambda r: r["task"]):
        print(f"{sum(r['success'])}/{len(r['success'])}  {r['task']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=10, help="LIBERO's fixed initial states per task")
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th task from the i-th")
    parser.add_argument("--summary", nargs="+", type=Path, help="summarise JSON-line files instead of measuring")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    first, every = (int(x) for x in args.shard.split("/"))
    measure(args.states, (first, every))


if __name__ == "__main__":
    main()
