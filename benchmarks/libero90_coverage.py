"""LIBERO-90's scripted-expert coverage: per task, the expert's success over LIBERO's fixed states, or the
goal it has no skill for; with ``--demos``, also the LIBERO base's pretraining demos (issue 31: the
pretraining catalogue is the tasks at >= 80%).

Needs the ``[libero]`` extra. One JSON line per task as it finishes, appended to ``--out`` (a rerun
skips the tasks already there, so a stopped run loses at most the task it was on); ``--shard i/n``
runs every n-th task from the i-th (one process per core). With ``--demos DIR`` a task at >= 80% of
its ``--states`` keeps its successful episodes (the measured ones included; LIBERO-90 is never
evaluated) and goes on through the later states until it has ``--per-task`` demos, written to
``DIR/<task>.hdf5`` as `DemoDataModule(format="per_task")` reads them (conf/pretrain_libero.yaml)::

    python benchmarks/libero90_coverage.py --states 10 --demos runs/libero90_demos --shard 0/2 --out cov.jsonl &
    python benchmarks/libero90_coverage.py --states 10 --demos runs/libero90_demos --shard 1/2 --out cov.jsonl
    python benchmarks/libero90_coverage.py --summary cov.jsonl
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

#: a task joins the pretraining catalogue when its expert succeeds on at least this share of the states
CATALOGUE_SHARE = 0.8


def _done(out: Path | None, redo_missing: bool) -> set[str]:
    if out is None or not out.exists():
        return set()
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    return {r["task"] for r in rows if not (redo_missing and "missing" in r)}


def measure(states: int, shard: tuple[int, int], demos: Path | None, per_task: int, out: Path | None,
            only: list[str] | None, redo_missing: bool) -> None:
    import subprocess

    from envs.demos import Demo, record_episode, write_task_file
    from envs.libero.suite import LiberoSuite

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    suite = LiberoSuite("libero_90", unseen=[], image_size=64)
    specs = suite.all_tasks()
    first, every = shard
    done = _done(out, redo_missing)
    tasks = [i for i, t in enumerate(specs) if t.split == "train"][first::every]
    # named tasks run (again: a new or mended skill), with those not yet in --out; the summary counts a
    # task's latest line
    tasks = [i for i in tasks if specs[i].name not in done or any(o in specs[i].name for o in only or ())]
    env = suite.make_env(1, chunk_size=1)
    try:
        for i in tasks:
            spec, start = specs[i], time.perf_counter()
            kept: list[Demo] = []
            row: dict = {"success": [], "steps": []}
            try:
                state = 0
                while state < spec.num_init_states:
                    if state >= states and (demos is None or len(kept) >= per_task
                                            or sum(row["success"]) < CATALOGUE_SHARE * states):
                        break
                    ep = record_episode(env, i, state)
                    if state < states:
                        row["success"].append(ep is not None)
                        row["steps"].append(spec.max_steps if ep is None else len(ep["actions"]))
                    if ep is not None and len(kept) < per_task:
                        kept.append(Demo(ep["actions"], ep["images"], ep["states"], ep["rewards"], ep["dones"],
                                         spec.instruction, spec.name, i, state, ep.get("wrist")))
                    state += 1
            except NotImplementedError as err:  # the expert has no skill for this goal
                row = {"missing": str(err).split(" (")[0]}
            if demos is not None and "success" in row and sum(row["success"]) >= CATALOGUE_SHARE * states:
                write_task_file(suite, demos, i, kept)
                row["demos"] = len(kept)
            row["seconds"] = round(time.perf_counter() - start, 1)
            row["commit"] = commit  # the expert's code: a task measured again at a later commit supersedes
            line = json.dumps({"task": spec.name, **row})
            print(line, flush=True)
            if out is not None:
                with out.open("a") as f:  # one short write per line: the shards append to one file
                    f.write(line + "\n")
    finally:
        env.close()


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
    last = {}  # a task measured again (a new skill, --redo-missing) counts once, by its latest line
    for line in (line for f in files for line in f.read_text().splitlines() if line.startswith("{")):
        row = json.loads(line)
        last[row["task"]] = row
    rows = list(last.values())
    ran = [r for r in rows if "success" in r]
    at80 = [r for r in ran if sum(r["success"]) >= CATALOGUE_SHARE * len(r["success"])]
    missing = collections.Counter(_kind(r["missing"]) for r in rows if "missing" in r)
    print(f"{len(rows)} tasks: {len(ran)} have a skill, {len(at80)} succeed on >= 80% of their states, "
          f"{len(rows) - len(ran)} lack one")
    for kind, n in missing.most_common():
        print(f"  {n:3d} tasks lack: {kind}")
    for r in sorted(ran, key=lambda r: r["task"]):
        print(f"{sum(r['success'])}/{len(r['success'])}  {r['task']}")
    from envs.libero.catalogue import held_out_twin, libero90_tasks

    tasks = libero90_tasks()
    index = {t.spec.name: i for i, t in enumerate(tasks)}
    twins = {r["task"]: held_out_twin(tasks[index[r["task"]]]) for r in at80}
    for name, twin in sorted(twins.items()):
        if twin:
            print(f"left out: {name} equals the held-out {twin}")
    ids = sorted(index[r["task"]] for r in at80 if not twins[r["task"]])
    print(f"catalogue ({len(ids)} tasks, LiberoSuite('libero_90', task_ids=...)): {ids}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=10, help="LIBERO's fixed initial states per task")
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th task from the i-th")
    parser.add_argument("--demos", type=Path, default=None, help="write the catalogue tasks' demos to DIR/<task>.hdf5")
    parser.add_argument("--per-task", type=int, default=20, help="demos per catalogue task (with --demos)")
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines here; skip tasks already in it")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="also measure again the tasks in --out whose name contains one of these")
    parser.add_argument("--redo-missing", action="store_true", help="measure again the tasks that lacked a skill")
    parser.add_argument("--summary", nargs="+", type=Path, help="summarise JSON-line files instead of measuring")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    first, every = (int(x) for x in args.shard.split("/"))
    measure(args.states, (first, every), args.demos, args.per_task, args.out, args.tasks, args.redo_missing)


if __name__ == "__main__":
    main()
