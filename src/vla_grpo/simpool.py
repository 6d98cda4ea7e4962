"""Simulator pools: the sub-envs of a rollout, stepped in worker processes or in this one.

One interface, two backends (:func:`make_pool` picks by ``num_workers``):
:class:`SimulatorPool` (worker processes) and :class:`InProcessPool` (one env
in the trainer's process). Both serve the env through :class:`EnvServer`, so
they return the same record. Each worker hosts one batched suite env (a TorchRL ``EnvBase``) over a share
of the round's sub-envs and answers ``reset``/``step`` over a pipe; the parent
blocks on the pipes (``multiprocessing.connection.wait``) while the workers
simulate and render.

Why not TorchRL's ``ParallelEnv``: its shared-memory hot path has the parent
spin-poll the workers' done flags (``ParallelEnv._wait_for_workers``), which
holds a whole core while the simulators run. With a core per simulator that
core is one of theirs: on 2 cores, a ``ParallelEnv`` of 2 workers stepped the
tabletop no faster than one process (about 2,400 env-steps/s with random
actions, against 4,000-4,300 for this pool and about 3,000 per independent
process; ``benchmarks/rollout.py``). Its no-buffer path blocks, but sends whole
TensorDicts through ``torch.multiprocessing``, which shares every tensor
through a file descriptor and a socket handshake. Here only plain numpy arrays
cross the pipe (one observation frame per sub-env per decision: KBs).

Sub-env ``i`` lives on worker ``i % num_workers``, so the G members of a group
are spread over the workers and an early-solved group does not idle one of
them. A worker whose sub-envs have all finished is not stepped; its rows keep
their final transition.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection, wait

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

_NestedKey = str | tuple[str, ...]


class SimulatorError(RuntimeError):
    """The suite env raised inside a worker (the round is re-run a bounded number of times)."""


def _to_arrays(td: TensorDictBase) -> list[tuple[_NestedKey, np.ndarray]]:
    """The tensor leaves of ``td`` as ``(key, array)`` (non-tensor entries, e.g. instructions, stay behind)."""
    return [(k, v.numpy()) for k, v in td.items(include_nested=True, leaves_only=True)
            if isinstance(v, torch.Tensor)]


def _from_arrays(items: list[tuple[_NestedKey, np.ndarray]], batch: int) -> TensorDict:
    td = TensorDict(batch_size=[batch])
    for key, value in items:
        td.set(key, torch.from_numpy(value))
    return td


class EnvServer:
    """One batched suite env answering ``reset``/``step`` with plain arrays.

    The worker processes serve through it, and so does :class:`InProcessPool`,
    so both backends step an env the same way and return the same record.
    """

    def __init__(self, env) -> None:
        self.env = env
        self.num_envs = env.batch_size[0]
        self._td: TensorDictBase | None = None

    def reset(self, payload: list[tuple[_NestedKey, np.ndarray]]) -> list[tuple[_NestedKey, np.ndarray]]:
        self._td = self.env.reset(_from_arrays(payload, self.num_envs))
        return _to_arrays(self._td)

    def step(self, action: np.ndarray) -> list[tuple[_NestedKey, np.ndarray]]:
        self._td.set("action", torch.from_numpy(action))
        out = self.env.step(self._td)
        self._td = self.env.step_mdp(out)
        return _to_arrays(out.get("next"))

    def close(self) -> None:
        self.env.close()


def _die_with_parent() -> None:
    """The trainer owns its simulators: they ignore SIGINT/SIGTERM (a Ctrl-C reaches the whole process
    group, a cluster signals every process; the trainer stops safely and closes them, vla_grpo.stopping),
    and on Linux the kernel kills them when the trainer dies, however it dies (``PR_SET_PDEATHSIG``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        parent = mp.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # it died before the call above: nobody closes us
            os._exit(0)


def _worker(conn: Connection, make_env, seed: int) -> None:
    """A simulator process: builds its env, then serves ``reset``/``step``/``close`` until told to stop."""
    _die_with_parent()
    # one core per simulator: no intra-op thread pool, and Mesa's llvmpipe (EGL on CPU) renders on 1 thread
    os.environ.setdefault("LP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        server = EnvServer(make_env(seed=seed))
        conn.send(("ready", None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            cmd, payload = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if cmd == "close":
            break
        try:
            if cmd not in ("reset", "step"):
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", getattr(server, cmd)(payload)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))
    with contextlib.suppress(Exception):
        server.close()


class _Pool:
    """What both backends share: sub-envs interleaved over workers, reset/step in sub-env order.

    Subclasses send a command to one worker (:meth:`_send`) and receive the
    answers of the started ones into ``self._last`` (:meth:`collect`).
    """

    def __init__(self, num_envs: int, num_workers: int) -> None:
        if num_envs % num_workers:
            raise ValueError(f"`num_envs` ({num_envs}) must be a multiple of `num_workers` ({num_workers})")
        self.num_envs, self.num_workers = num_envs, num_workers
        #: sub-env indices of each worker (interleaved) and where each sub-env's row sits in the concatenation
        self.rows = [torch.arange(w, num_envs, num_workers) for w in range(num_workers)]
        self._order = torch.argsort(torch.cat(self.rows))
        self._last: list[TensorDict | None] = [None] * num_workers
        self.is_closed = False

    pids: list[int] = []

    def _send(self, w: int, cmd: str, payload) -> None:
        raise NotImplementedError

    def collect(self, workers: list[int]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _result(self) -> TensorDict:
        return torch.cat(self._last, 0)[self._order]

    def reset(self, td: TensorDictBase) -> TensorDict:
        """Reset every sub-env to the prompts in ``td`` (``[num_envs]``); returns the first observations."""
        for w, rows in enumerate(self.rows):
            self._send(w, "reset", _to_arrays(td[rows]))
        self.collect(list(range(self.num_workers)))
        return self._result()

    def step(self, action: torch.Tensor, active: torch.Tensor) -> TensorDict:
        """Execute one action chunk per sub-env; returns the ``"next"`` entries, ``[num_envs]``.

        Workers none of whose sub-envs is ``active`` are not stepped: their rows
        repeat the last transition (a finished episode is frozen anyway).
        """
        workers = list(range(self.num_workers))
        rows = self.rows_of(workers)
        self.collect(self.send_step(workers, action[rows], active[rows]))
        return self._result()

    # -- one group of workers at a time (the pipelined loop steps two halves in turn) --
    def rows_of(self, workers: list[int]) -> torch.Tensor:
        """Sub-env indices of ``workers``, in the order :meth:`send_step`/:meth:`collect` use."""
        return torch.cat([self.rows[w] for w in workers])

    def send_step(self, workers: list[int], action: torch.Tensor, active: torch.Tensor) -> list[int]:
        """Start one action chunk on ``workers`` (rows in :meth:`rows_of` order) without waiting;
        returns the workers that were started (those with an active sub-env)."""
        stepped, start = [], 0
        for w in workers:
            rows = slice(start, start + len(self.rows[w]))
            start = rows.stop
            if bool(active[rows].any()):
                self._send(w, "step", action[rows].contiguous().numpy())
                stepped.append(w)
        return stepped

    def last(self, workers: list[int]) -> TensorDict:
        """The latest transition of ``workers``' sub-envs, rows in :meth:`rows_of` order."""
        return torch.cat([self._last[w] for w in workers], 0)


class InProcessPool(_Pool):
    """The pool interface on one env in this process: a command runs when it is sent.

    For a single simulator (tests, debugging, a suite that can't be pickled),
    with exactly the record the worker processes give.
    """

    def __init__(self, suite, *, num_envs: int, chunk_size: int, seed: int = 0) -> None:
        super().__init__(num_envs, 1)
        self._server = EnvServer(suite.make_env(num_envs, chunk_size=chunk_size, seed=seed))
        self._answers: dict[int, list] = {}

    def _send(self, w: int, cmd: str, payload) -> None:
        self._answers[w] = getattr(self._server, cmd)(payload)

    def collect(self, workers: list[int]) -> None:
        for w in workers:
            self._last[w] = _from_arrays(self._answers.pop(w), len(self.rows[w]))

    def close(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            self._server.close()


class SimulatorPool(_Pool):
    """``num_workers`` simulator processes over ``num_envs`` sub-envs of a suite.

    :meth:`reset` and :meth:`step` take and return ``[num_envs]`` TensorDicts
    in sub-env order (the worker split is internal). A worker that dies raises
    ``EOFError``/``OSError``; one that does not answer within ``timeout_s``
    raises ``TimeoutError``; the caller restarts the pool.

    Args:
        suite: the task suite (pickled to the workers).
        num_envs: sub-envs in all; a multiple of ``num_workers``.
        chunk_size: actions per decision.
        num_workers: processes.
        seed: env seed of worker 0 (worker ``w`` gets ``seed + w``).
        timeout_s: seconds a reset or step may take before the worker counts as hung.
        start_timeout_s: seconds a worker may take to import and build its env.
    """

    def __init__(self, suite, *, num_envs: int, chunk_size: int, num_workers: int, seed: int = 0,
                 timeout_s: float = 120.0, start_timeout_s: float = 600.0) -> None:
        super().__init__(num_envs, num_workers)
        self.timeout_s = timeout_s
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[mp.Process] = []
        for w in range(num_workers):
            parent, child = ctx.Pipe()
            make_env = _EnvFactory(suite, num_envs // num_workers, chunk_size)
            proc = ctx.Process(target=_worker, args=(child, make_env, seed + w), daemon=True,
                               name=f"vla_grpo-sim-{w}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        # the workers ignore SIGTERM, which multiprocessing's own exit hook sends them before it joins: this
        # hook, registered after it, runs before it, on every exit (an exception skips Lightning's teardown)
        atexit.register(_kill_processes, list(self._procs))
        try:
            for w in range(num_workers):
                self._recv(w, start_timeout_s)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _recv(self, w: int, timeout: float):
        conn = self._conns[w]
        if not conn.poll(timeout):
            raise TimeoutError(f"simulator worker {w} (pid {self._procs[w].pid}) did not answer within {timeout:.0f} s")
        status, payload = conn.recv()  # EOFError when the worker died
        if status == "error":
            raise SimulatorError(f"simulator worker {w} failed:\n{payload}")
        return payload

    def collect(self, workers: list[int]) -> None:
        """Receive the answers of ``workers`` (those started by :meth:`send_step`, or all after a reset)
        as they come, blocking without spinning, into ``self._last``."""
        pending = {self._conns[w]: w for w in workers}
        while pending:
            ready = wait(list(pending), timeout=self.timeout_s)
            if not ready:
                w = next(iter(pending.values()))
                raise TimeoutError(f"simulator worker {w} (pid {self._procs[w].pid}) did not answer "
                                   f"within {self.timeout_s:.0f} s")
            for conn in ready:
                w = pending.pop(conn)
                self._last[w] = _from_arrays(self._recv(w, 0), len(self.rows[w]))

    def _send(self, w: int, cmd: str, payload) -> None:
        self._conns[w].send((cmd, payload))

    def close(self) -> None:
        """Stop the workers (killing any that do not exit, e.g. a hung or stopped one)."""
        if self.is_closed:
            return
        self.is_closed = True
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.send(("close", None))
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()


def _kill_processes(procs: list) -> None:
    for proc in procs:
        with contextlib.suppress(Exception):
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


class _EnvFactory:
    """Picklable ``make_env(seed=...)`` of a worker's batched suite env."""

    def __init__(self, suite, num_envs: int, chunk_size: int) -> None:
        self.suite, self.num_envs, self.chunk_size = suite, num_envs, chunk_size

    def __call__(self, seed: int):
        return self.suite.make_env(self.num_envs, chunk_size=self.chunk_size, seed=seed)


def make_pool(suite, *, num_envs: int, chunk_size: int, num_workers: int = 1, seed: int = 0,
              timeout_s: float = 120.0) -> _Pool:
    """A pool of ``num_envs`` sub-envs: in this process for one worker, else worker processes."""
    if num_workers == 1:
        return InProcessPool(suite, num_envs=num_envs, chunk_size=chunk_size, seed=seed)
    return SimulatorPool(suite, num_envs=num_envs, chunk_size=chunk_size, num_workers=num_workers, seed=seed,
                         timeout_s=timeout_s)


__all__ = ["EnvServer", "InProcessPool", "SimulatorError", "SimulatorPool", "make_pool"]
