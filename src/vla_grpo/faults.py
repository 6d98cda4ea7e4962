"""Fault injection into the simulator workers, for tests: crash, hang, exception, MuJoCo instability.

A test sets ``VLA_GRPO_INJECT_FAULTS`` before a fit; the worker processes
inherit the environment and read it when they start (:meth:`FaultInjector.from_env`).
Without the variable nothing here runs. The spec is comma-separated ``key=value``::

    VLA_GRPO_INJECT_FAULTS="rate=0.02,kinds=crash+hang+exception+unstable,max=4,seed=3,log=/tmp/faults.jsonl"

- ``rate``: chance that a ``reset``/``step`` command a worker receives faults;
- ``kinds``: what a fault is, drawn uniformly (``+``-separated):
  ``crash`` (``os._exit``, as a segfaulting simulator), ``hang`` (the worker
  stops answering, as a deadlocked renderer), ``exception`` (the env raises),
  ``unstable`` (a running sub-env's MuJoCo velocities set to 1e12, so the
  next physics step diverges as a real instability does);
- ``max``: faults in the whole run, over all workers and restarts (counted
  in the log under a file lock, so concurrent workers never exceed it);
- ``seed``: with each worker incarnation's pid, seeds its draws (a restarted
  worker does not replay its predecessor's faults);
- ``log``: JSON lines, one per fault injected: ``{"kind", "cmd", "pid"}``.

The first three end the worker's round; the engine restarts the simulators
and re-runs the round (:class:`~vla_grpo.rollout.GroupedRollout`). An
unstable sub-env ends its episode as a failure (``TabletopEnv._run_chunk``).
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass

import numpy as np

ENV_VAR = "VLA_GRPO_INJECT_FAULTS"
KINDS = ("crash", "hang", "exception", "unstable")


class InjectedFault(RuntimeError):
    """The exception a worker raises when an ``exception`` fault is injected."""


@dataclass
class FaultPlan:
    """What to inject (parsed from :data:`ENV_VAR`; see the module docstring)."""

    rate: float
    log: str
    kinds: tuple[str, ...] = KINDS
    max: int = 1_000_000
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        expected = f"{ENV_VAR}={spec!r}: expected rate=<p>,log=<file>[,kinds=a+b][,max=<n>][,seed=<s>]"
        try:
            items = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
            plan = cls(rate=float(items.pop("rate")), log=items.pop("log"),
                       kinds=tuple(items.pop("kinds", "+".join(KINDS)).split("+")),
                       max=int(items.pop("max", 1_000_000)), seed=int(items.pop("seed", 0)))
        except (KeyError, ValueError):
            raise ValueError(expected) from None
        if items or not set(plan.kinds) <= set(KINDS):
            raise ValueError(f"{expected}, kinds among {'+'.join(KINDS)}")
        return plan


def injected(log: str | os.PathLike) -> list[dict]:
    """The faults a run's workers injected (the plan's log), oldest first."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


class FaultInjector:
    """Draws and injects the faults of one worker process."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.rng = np.random.default_rng([plan.seed, os.getpid()])

    @classmethod
    def from_env(cls) -> FaultInjector | None:
        spec = os.environ.get(ENV_VAR)
        return cls(FaultPlan.parse(spec)) if spec else None

    def before(self, cmd: str, server) -> None:
        """Maybe inject a fault before the worker serves ``cmd`` on ``server`` (an ``EnvServer``)."""
        if cmd not in ("reset", "step") or self.rng.random() >= self.plan.rate:
            return
        kind = self.plan.kinds[int(self.rng.integers(len(self.plan.kinds)))]
        target = self._unstable_target(server) if kind == "unstable" else None
        if kind == "unstable" and (cmd != "step" or target is None):
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

    @staticmethod
    def _unstable_target(server):
        """The ``MjData`` of a still-running sub-env of a MuJoCo suite env, else None."""
        sims, last = getattr(server.env, "sims", None), server.last
        if sims is None or last is None:
            return None
        running = [i for i, done in enumerate(last.get("done").view(-1).tolist())
                   if not done and getattr(sims[i], "data", None) is not None]
        return sims[running[0]].data if running else None

    def _claim(self, kind: str, cmd: str) -> bool:
        """Log the fault unless the run's ``max`` is reached (under a lock: workers share the log)."""
        with open(self.plan.log, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            if sum(1 for line in f if line.strip()) >= self.plan.max:
                return False
            f.write(json.dumps({"kind": kind, "cmd": cmd, "pid": os.getpid()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True


__all__ = ["ENV_VAR", "KINDS", "FaultInjector", "FaultPlan", "InjectedFault", "injected"]
