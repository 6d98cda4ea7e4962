"""The rollout engine: grouped episodes of a batch of prompts, one batched policy call per decision.

:class:`GroupedRollout` resets ``num_envs`` sub-envs to their prompts (G copies
of each prompt share a ``group_id``) on a simulator pool
(:mod:`vla_grpo.simpool`: worker processes, or one env in this process), then
alternates one policy call on the still-running episodes
(:class:`ActivePolicyStep`) with one action chunk per sub-env, until every
episode is done. An episode batch comes back as one ``[num_envs, T]``
TensorDict with a ``valid`` mask (:meth:`GroupedRollout.run`); a GRPO round
comes back as a :class:`RolloutRound`, that record with the prompts, ids and
instructions it was rolled out from (:meth:`GroupedRollout.run_round`), which
:mod:`vla_grpo.groups` turns into trajectories.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass

import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase

from vla_grpo.envs.base import Suite
from vla_grpo.keys import ACTION_KEY, INSTRUCTION_KEY, VLA_ACTION_KEY
from vla_grpo.prompts import Prompt, prompt_instructions, prompt_reset_td, repeat_per_member
from vla_grpo.sharding import gathered
from vla_grpo.simpool import SimulatorError, make_pool


class IncompleteEpisodesError(Exception):
    """A suite env did not end an episode by its step limit (a suite bug: raised, not re-run)."""


#: the kinds of worker failure :attr:`GroupedRollout.faults` counts
FAULT_KINDS = ("died", "hung", "raised")


@dataclass(frozen=True)
class RolloutRound:
    """One GRPO round as the engine rolled it out: what was asked, under which ids, and what came back.

    Group ``k`` is the ``group_size`` consecutive sub-envs ``k * group_size ...``: each
    started from ``prompts[k]`` under group id ``group_ids[k]``.

    Attributes:
        prompts: one per group, as drawn (what the prompt sampler gets the outcomes of).
        group_ids: one per group.
        traj_ids: one per sub-env: the id of the trajectory it rolled out.
        instructions: one per sub-env: what the policy was asked (its prompt's phrasing).
        data: the ``[num_envs, T]`` record with its ``valid`` mask, as :meth:`GroupedRollout.run` returns it.
    """

    prompts: list[Prompt]
    group_ids: list[int]
    traj_ids: list[int]
    instructions: list[str]
    data: TensorDict

    @property
    def group_size(self) -> int:
        return len(self.traj_ids) // len(self.prompts)


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, max(1, min(n, k)) + 1) if n % d == 0)


class GroupedRollout:
    """Rolls out batches of prompts on the suite's envs, in worker processes or in this one.

    The ``num_envs`` sub-envs are spread over a simulator pool of
    ``num_workers`` processes (:class:`~vla_grpo.simpool.SimulatorPool`; why not
    TorchRL's ``ParallelEnv`` is in that module), or live in this process when
    ``num_workers == 1`` (:class:`~vla_grpo.simpool.InProcessPool`); the loop is
    the same. When a worker dies, stops answering for ``worker_timeout_s`` or its
    env raises, the simulators are restarted and the round re-run (at most
    ``max_restarts`` times in a row), so a partial trajectory never leaves
    :meth:`run`; :attr:`faults` counts each kind.

    Args:
        suite: the task suite.
        num_envs: sub-envs in all (``prompts_per_round * group_size``).
        chunk_size: actions executed open-loop per decision.
        num_workers: simulator processes (1 = in this process); lowered to a
            divisor of ``num_envs``.
        seed: env seed.
        worker_timeout_s: seconds without an answer after which a worker is
            declared hung.
        max_restarts: restarts per round before giving up (the last error is raised).
        pipeline: with ``num_workers >= 2``, split the workers into two halves
            and step them in turn: the policy runs on one half's observations
            while the other half simulates (two policy calls per decision, each
            on half the sub-envs), so the simulators don't wait for the policy.
    """

    def __init__(self, suite: Suite, *, num_envs: int, chunk_size: int, num_workers: int = 1,
                 seed: int = 0, worker_timeout_s: float = 120.0, max_restarts: int = 3,
                 pipeline: bool = False) -> None:
        self.suite = suite
        self.num_envs = num_envs
        self.chunk_size = chunk_size
        self.num_workers = _largest_divisor_at_most(num_envs, num_workers)
        self.seed = seed
        self.worker_timeout_s = worker_timeout_s
        self.max_restarts = max_restarts
        self.pipeline = bool(pipeline) and self.num_workers >= 2
        self.max_decisions = suite.max_decisions(chunk_size)
        #: worker failures so far, by kind: died (crash, OOM kill), hung (timeout), raised (env error)
        self.faults = dict.fromkeys(FAULT_KINDS, 0)
        self.last_env_steps_per_s = 0.0
        self.last_decisions_per_s = 0.0
        self.pool = None  # built on the first run

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the simulator workers (empty when in-process or not started)."""
        return [] if self.pool is None else list(self.pool.pids)

    def close(self) -> None:
        if self.pool is not None and not self.pool.is_closed:
            self.pool.close()
        self.pool = None

    @property
    def restarts(self) -> int:
        return sum(self.faults.values())

    def _restart(self, err: BaseException) -> None:
        kind = "raised" if isinstance(err, SimulatorError) else "hung" if isinstance(err, TimeoutError) else "died"
        self.faults[kind] += 1
        warnings.warn(f"rollout worker failed ({type(err).__name__}: {str(err)[-300:]}); "
                      f"restarting the simulators and re-running the round (restart {self.restarts})",
                      stacklevel=3)
        self.close()

    def run(self, policy, prompts: list[Prompt], group_ids: list[int], *, greedy: bool = False) -> TensorDict:
        """Roll out one episode per sub-env; returns ``[num_envs, T]`` with a ``valid`` mask.

        ``prompts`` and ``group_ids`` have one entry per sub-env. ``valid[i, t]``
        is True up to and including the decision at which episode ``i`` ended.
        """
        if len(prompts) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} prompts (one per sub-env), got {len(prompts)}")
        return self._run(policy, prompts, group_ids, prompt_instructions(self.suite, prompts), greedy)

    def run_round(self, policy, prompts: list[Prompt], group_ids: list[int], traj_ids: list[int], *,
                  greedy: bool = False) -> RolloutRound:
        """Roll out a GRPO round: ``num_envs // len(prompts)`` members of each prompt's group.

        ``prompts`` and ``group_ids`` have one entry per group, ``traj_ids`` one per sub-env.
        """
        if self.num_envs % len(prompts) or len(group_ids) != len(prompts) or len(traj_ids) != self.num_envs:
            raise ValueError(f"expected prompts and group ids of one length dividing {self.num_envs} and "
                             f"{self.num_envs} trajectory ids, got {len(prompts)}, {len(group_ids)} and "
                             f"{len(traj_ids)}")
        members, member_groups = repeat_per_member(prompts, group_ids, self.num_envs // len(prompts))
        instructions = prompt_instructions(self.suite, members)
        data = self._run(policy, members, member_groups, instructions, greedy)
        return RolloutRound(list(prompts), list(group_ids), list(traj_ids), instructions, data)

    @torch.no_grad()
    def _run(self, policy, prompts: list[Prompt], group_ids: list[int], instructions: list[str],
             greedy: bool) -> TensorDict:
        """:meth:`run`, given each sub-env's instruction: re-runs the round after a worker failure."""
        # an FSDP-sharded policy rolls out with whole weights, gathered once (re-runs included: the
        # other ranks don't re-run, so nothing inside may be collective)
        with gathered(policy):
            for attempt in range(self.max_restarts + 1):
                try:
                    if self.pool is None:
                        self.pool = make_pool(self.suite, num_envs=self.num_envs, chunk_size=self.chunk_size,
                                              num_workers=self.num_workers, seed=self.seed,
                                              timeout_s=self.worker_timeout_s)
                    return self._run_once(policy, prompts, group_ids, instructions, greedy)
                except (RuntimeError, EOFError, OSError, TimeoutError) as err:  # SimulatorError too
                    # an env error may be a rare state or a bug: after max_restarts re-runs it is raised
                    if attempt == self.max_restarts or self.num_workers == 1:
                        raise
                    self._restart(err)
        raise AssertionError("unreachable")

    def _run_once(self, policy, prompts: list[Prompt], group_ids: list[int], instructions: list[str],
                  greedy: bool) -> TensorDict:
        start = time.perf_counter()
        with _intra_op_threads(_spare_cores(len(self.pool.pids))):
            first = self.pool.reset(prompt_reset_td(prompts, group_ids))
            if self.pipeline:
                data = self._pipelined_loop(policy, greedy, instructions, first)
            else:
                data = self._loop(ActivePolicyStep(policy, greedy, self.num_envs, instructions), first)
        elapsed = max(time.perf_counter() - start, 1e-9)
        done = data.get(("next", "done")).squeeze(-1)
        # entries after an episode's end are its frozen final state: valid until first done
        valid = (done.long().cumsum(-1) - done.long()) == 0
        if not done.any(-1).all():  # the suite contract: every episode ends by its step limit
            raise IncompleteEpisodesError(f"{int((~done.any(-1)).sum())} episodes did not end within "
                                          f"{self.max_decisions} decisions (the suite's longest step limit); "
                                          f"a partial trajectory is never kept")
        data.set("valid", valid)
        decisions = int(valid.sum())
        self.last_decisions_per_s = decisions / elapsed
        self.last_env_steps_per_s = decisions * self.chunk_size / elapsed
        return data

    def _loop(self, actor, td: TensorDictBase) -> TensorDict:
        """The decision loop: one policy call, then every worker steps its share.

        Not ``env.rollout(break_when_all_done=True)``: suite envs freeze
        finished episodes (see ``vla_grpo.envs.base``), so stepping the whole
        batch is safe and keeps every decision's batch the same shape. The
        instructions stay out of the record; the actor hands them to the policy.
        """
        steps = []
        state_keys = list(td.keys(include_nested=True, leaves_only=True))  # what a step starts from
        for _ in range(self.max_decisions):
            td = actor(td)
            nxt = self.pool.step(td.get(ACTION_KEY), ~td.get("done").view(-1))
            steps.append(td.set("next", nxt))
            if nxt.get("done").all():
                break
            td = nxt.select(*state_keys)
        return torch.stack(steps, dim=-1)

    def _pipelined_loop(self, policy, greedy: bool, instructions: list[str], td: TensorDictBase) -> TensorDict:
        """The pool's decision loop on two halves of the workers in turn.

        While one half simulates its chunk, the policy acts on the other half's
        latest observations and starts it. Each sub-env still gets one policy
        call per decision on its own observation; only the grouping of the calls
        changes. A half whose episodes have all ended stops; its record is
        padded with its final (done) transition, which ``valid`` masks out.
        """
        pool = self.pool
        half = self.num_workers // 2
        groups = [list(range(half)), list(range(half, self.num_workers))]
        rows = [pool.rows_of(g) for g in groups]
        actors = [ActivePolicyStep(policy, greedy, len(r), [instructions[i] for i in r.tolist()]) for r in rows]
        state_keys = list(td.keys(include_nested=True, leaves_only=True))
        tds = [td[r] for r in rows]
        records: list[list[TensorDict]] = [[], []]
        started: list[list[int] | None] = [None, None]

        def launch(h: int) -> None:
            tds[h] = actors[h](tds[h])
            started[h] = pool.send_step(groups[h], tds[h].get(ACTION_KEY), ~tds[h].get("done").view(-1))

        launch(0)
        launch(1)
        while any(s is not None for s in started):
            for h in (0, 1):
                if started[h] is None:
                    continue
                pool.collect(started[h])
                nxt = pool.last(groups[h])
                records[h].append(tds[h].set("next", nxt))
                if nxt.get("done").all() or len(records[h]) == self.max_decisions:
                    started[h] = None
                    continue
                tds[h] = nxt.select(*state_keys)
                launch(h)
        length = max(len(r) for r in records)
        halves = [torch.stack(r + [r[-1]] * (length - len(r)), dim=-1) for r in records]
        return torch.cat(halves, 0)[torch.argsort(torch.cat(rows))]


def _spare_cores(num_workers: int) -> int:
    """Cores of this process's CPU set not taken by ``num_workers`` simulators (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - num_workers)


@contextlib.contextmanager
def _intra_op_threads(n: int):
    """Caps torch's intra-op threads while the simulators run, then restores them.

    A CPU policy with more threads than spare cores competes with the
    simulators, and its OpenMP threads spin-wait between calls (on 2 cores with
    2 workers, 2 policy threads made the engine ~20% slower:
    docs/experiments/rollout_engine.md).
    """
    before = torch.get_num_threads()
    if n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class ActivePolicyStep:
    """Calls the policy once per decision on the episodes still running.

    Rows of finished episodes get zero actions (a suite env ignores the actions
    of a finished episode); their entries are dropped later by the ``valid`` mask.

    ``instructions`` holds each sub-env's instruction for the whole rollout. A
    ``NonTensorStack`` of strings costs about 25 us per row to build, index,
    clone or move between devices (5 ms for 112 rows, each, measured): so the
    policy's input is built from the tensors alone, moved to the policy's
    device, and gets a stack of the active rows' instructions that is rebuilt
    only when an episode ends. Only the action's tensors come back to the CPU.
    """

    def __init__(self, policy, greedy: bool, num_envs: int, instructions: list[str]) -> None:
        if len(instructions) != num_envs:
            raise ValueError(f"expected {num_envs} instructions (one per sub-env), got {len(instructions)}")
        self.policy = policy
        self.greedy = greedy
        self.num_envs = num_envs
        self.instructions = list(instructions)
        self.device = next(policy.parameters()).device
        self._active_key: bytes | None = None
        self._active_instructions: NonTensorStack | None = None

    def _instructions_of(self, active: torch.Tensor) -> NonTensorStack:
        key = active.numpy().tobytes()
        if key != self._active_key:
            rows = active.tolist()
            self._active_instructions = NonTensorStack(*[s for s, a in zip(self.instructions, rows, strict=True) if a])
            self._active_key = key
        return self._active_instructions

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        shape = td.batch_size
        flat = td.reshape(self.num_envs)
        done = flat.get("done", None)
        active = torch.ones(self.num_envs, dtype=torch.bool) if done is None else ~done.view(-1)
        inputs = flat.exclude(INSTRUCTION_KEY)
        if not active.all():
            inputs = inputs[active]
        # device-free, so that setting the (host-side) instructions moves nothing
        inputs = inputs.to(self.device, non_blocking=True).clear_device_()
        inputs.set(INSTRUCTION_KEY, self._instructions_of(active))
        out = self.policy.act(inputs, greedy=self.greedy)
        # what the policy declares it must keep (token heads: tokens; flow heads: the denoising chain)
        actions = out.get(VLA_ACTION_KEY).select(*self.policy.action_record_keys).to("cpu")
        if not active.all():
            full = TensorDict({k: torch.zeros(self.num_envs, *v.shape[1:], dtype=v.dtype)
                               for k, v in actions.items()}, batch_size=[self.num_envs])
            full[active] = actions
            actions = full
        flat.set(VLA_ACTION_KEY, actions)
        flat.set(ACTION_KEY, actions.get("chunk"))
        return flat.reshape(shape)


__all__ = ["FAULT_KINDS", "ActivePolicyStep", "GroupedRollout", "IncompleteEpisodesError", "RolloutRound"]
