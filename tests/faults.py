"""Fault injection for tests: a suite wrapper whose envs crash, hang, raise or go unstable in simulator workers.

:class:`FaultySuite` wraps any suite. The simulator pool pickles it to its
worker processes like any suite (so this module must stay importable there),
and each env it makes there is a :class:`FaultyEnv`: before it serves a
``reset`` or a ``step``, a fault comes with probability ``rate``, of a kind
drawn uniformly from ``kinds``:

- ``crash``: ``os._exit``, as a segfaulting simulator;
- ``hang``: the worker stops answering, as a deadlocked renderer;
- ``exception``: the env raises (:class:`InjectedFault`);
- ``unstable``: a running sub-env's MuJoCo velocities set to 1e12, so its next
  physics step diverges as a real instability does (MuJoCo suites only).

At most ``max_faults`` in the whole run, over all workers and restarts: each
fault is logged to ``log`` (JSON lines ``{"kind", "cmd", "pid"}``) under a file
lock, so concurrent workers never exceed it. Each worker process draws from
``(seed, its pid)``, so a restarted worker does not replay its predecessor's
faults. Envs built in the trainer's own process (one simulator, no workers)
inject nothing: a crash there would end the run instead of testing the engine.

The first three end the worker's round; the engine restarts the simulators and
re-runs it (:class:`~vla_grpo.rollout.GroupedRollout`). An unstable sub-env
ends its episode as a failure. A fit under faults, from the command line::

    python -m vla_grpo fit -c conf/grpo_tabletop.yaml --model.num_workers=2 --model.suite='{
      "class_path": "tests.faults.FaultySuite", "init_args": {"rate": 0.05, "max_faults": 3,
      "seed": 7, "log": "/tmp/faults.jsonl", "suite": {"class_path":
      "vla_grpo.envs.tabletop.TabletopSuite", "init_args": {"image_size": 64}}}}'
"""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import time
from dataclasses import dataclass

import numpy as np

from vla_grpo.envs.base import Suite

KINDS = ("crash", "hang", "exception", "unstable")


class InjectedFault(RuntimeError):
    """The exception an env raises when an ``exception`` fault is injected."""


@dataclass(frozen=True)
class FaultPlan:
    """What to inject (see the module docstring)."""

    rate: float
    log: str
    kinds: tuple[str, ...] = KINDS
    max_faults: int = 1_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"FaultySuite `rate` must be in [0, 1] (got {self.rate})")
        if not self.kinds or not set(self.kinds) <= set(KINDS):
            raise ValueError(f"FaultySuite `kinds` must be some of {', '.join(KINDS)} (got {list(self.kinds)})")
        if self.max_faults < 0:
            raise ValueError(f"FaultySuite `max_faults` must be >= 0 (got {self.max_faults})")


def injected(log: str | os.PathLike) -> list[dict]:
    """The faults a run's workers injected (the plan's log), oldest first."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


class FaultySuite(Suite):
    """``suite``, whose envs inject the faults of a :class:`FaultPlan` when built in a simulator worker.

    Args:
        suite: the suite to wrap; every attribute but :meth:`make_env` is its own.
        rate: chance that a ``reset``/``step`` a worker serves faults.
        log: the JSON-lines file every injected fault is written to.
        kinds: what a fault can be (see the module docstring).
        max_faults: faults in the whole run.
        seed: with each worker's pid, seeds its draws.
    """

    def __init__(self, suite: Suite, *, rate: float, log: str, kinds: tuple[str, ...] = KINDS,
                 max_faults: int = 1_000_000, seed: int = 0) -> None:
        self.suite = suite
        self.plan = FaultPlan(rate=rate, log=str(log), kinds=tuple(kinds), max_faults=max_faults, seed=seed)
        self.name = suite.name

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "suite":  # unpickling looks some up before `suite` is set
            raise AttributeError(name)
        return getattr(self.suite, name)

    def all_tasks(self):
        return self.suite.all_tasks()

    @property
    def splits(self) -> list[str]:
        return self.suite.splits

    def tasks(self, split: str):
        return self.suite.tasks(split)

    def task_index(self, name: str) -> int:
        return self.suite.task_index(name)

    def max_decisions(self, chunk_size: int) -> int:
        return self.suite.max_decisions(chunk_size)

    def make_env(self, num_envs: int, *, chunk_size: int, seed: int = 0):
        env = self.suite.make_env(num_envs, chunk_size=chunk_size, seed=seed)
        return FaultyEnv(env, self.plan) if multiprocessing.parent_process() is not None else env


class FaultyEnv:
    """An env whose ``reset``/``step`` may first inject a fault; everything else is the wrapped env's."""

    def __init__(self, env, plan: FaultPlan) -> None:
        self.env = env
        self.plan = plan
        self.rng = np.random.default_rng([plan.seed, os.getpid()])

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, tensordict=None, **kwargs):
        self._maybe_fault("reset", None)
        return self.env.reset(tensordict, **kwargs)

    def step(self, tensordict):
        self._maybe_fault("step", tensordict)
        return self.env.step(tensordict)

    def _maybe_fault(self, cmd: str, tensordict) -> None:
        """Maybe inject a fault before ``cmd``; ``tensordict`` is the state a step starts from."""
        if self.rng.random() >= self.plan.rate:
            return
        kind = self.plan.kinds[int(self.rng.integers(len(self.plan.kinds)))]
        target = self._unstable_target(tensordict) if kind == "unstable" else None
        if kind == "unstable" and target is None:
            return  # only a running MuJoCo sub-env can go unstable
        if not self._claim(kind, cmd):
            return
        if kind == "crash":
            os._exit(70)
        if kind == "hang":
            time.sleep(10**6)  # the parent times out and kills this process
        if kind == "exception":
            raise InjectedFault(f"injected exception before {cmd!r}")
        target.qvel[:] = 1e12

    def _unstable_target(self, tensordict):
        """The ``MjData`` of a still-running sub-env of a MuJoCo suite env, else None (and at reset)."""
        sims = getattr(self.env, "sims", None)
        if sims is None or tensordict is None:
            return None
        running = [i for i, done in enumerate(tensordict.get("done").view(-1).tolist())
                   if not done and getattr(sims[i], "data", None) is not None]
        return sims[running[0]].data if running else None

    def _claim(self, kind: str, cmd: str) -> bool:
        """Log the fault unless the run's ``max_faults`` is reached (under a lock: workers share the log)."""
        with open(self.plan.log, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            if sum(1 for line in f if line.strip()) >= self.plan.max_faults:
                return False
            f.write(json.dumps({"kind": kind, "cmd": cmd, "pid": os.getpid()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True
