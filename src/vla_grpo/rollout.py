"""Grouped rollouts, trajectory splitting and the dynamic-sampling replay buffer.

One *round* resets ``prompts_per_round x group_size`` sub-envs, G copies of
each prompt (task, initial state) sharing a ``group_id``, and rolls them out
with one batched policy call per decision until every episode is done. Each
episode becomes a trajectory TensorDict that goes through TorchRL's
``MCAdvantage`` replay-buffer transform: it waits for the G members of a group,
drops the group if all outcomes are equal (dynamic sampling), and writes the
group-normalised advantage ``(R - mean) / std`` on every decision.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import NamedTuple

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives.llm import MCAdvantage

from vla_grpo.envs.base import TRAIN_SPLIT, Suite
from vla_grpo.keys import (
    ACTION_KEY,
    ACTION_TOKENS_KEY,
    GROUP_ID_KEY,
    GROUP_STD_KEY,
    INIT_STATE_KEY,
    INSTRUCTION_KEY,
    RETURN_KEY,
    SAMPLE_LOG_PROBS_KEY,
    SUCCESS_KEY,
    TASK_INDEX_KEY,
    TRAJ_ID_KEY,
    TRAJ_TOKENS_KEY,
    VLA_ACTION_KEY,
)
from vla_grpo.simpool import SimulatorError, SimulatorPool

#: what a stored decision keeps of a rollout step
#: (instructions stay out: non-tensor entries make the tensor storage crawl;
#: :func:`attach_instructions` restores them from ``task_index``)
DECISION_KEYS = (
    "observation",
    ACTION_TOKENS_KEY,
    SAMPLE_LOG_PROBS_KEY,
    GROUP_ID_KEY,
    TASK_INDEX_KEY,
    INIT_STATE_KEY,
    ("next", "reward"),
    ("next", "done"),
)


class Prompt(NamedTuple):
    """A (task, initial state) pair: what a GRPO group is rolled out from."""

    task_index: int
    init_state_id: int


def split_prompts(
    suite: Suite, split: str, states_per_task: int | None = None, first_state: int = 0
) -> list[Prompt]:
    """Every task of a split x its initial states ``first_state, ...`` (``states_per_task`` of them, or all)."""
    out = []
    for task in suite.tasks(split):
        index = suite.task_index(task.name)
        stop = task.num_init_states if states_per_task is None else first_state + states_per_task
        out.extend(Prompt(index, s) for s in range(first_state, min(stop, task.num_init_states)))
    return out


def select_train_tasks(suite: Suite, tasks: list[str]) -> list[int]:
    """Indices of the train tasks named in ``tasks``: full names, or family prefixes ending in ``/``."""
    train = {t.name: suite.task_index(t.name) for t in suite.tasks(TRAIN_SPLIT)}
    out: list[int] = []
    for entry in tasks:
        hits = [i for name, i in train.items() if name == entry or (entry.endswith("/") and name.startswith(entry))]
        if not hits:
            raise ValueError(f"`--model.train_tasks`: {entry!r} names no train task; expected a name like "
                             f"{next(iter(train))!r} or a family prefix like {next(iter(train)).split('/')[0] + '/'!r}")
        out.extend(i for i in hits if i not in out)
    return out


class PromptSampler:
    """Uniform prompt draws from this rank's shard of the train split.

    Ranks get disjoint shards (``prompts[rank::world_size]``), so DDP ranks roll
    out different prompts with their own simulators. ``first_state`` leaves each
    task's initial states below it out (the greedy eval's states).
    """

    def __init__(self, suite: Suite, *, first_state: int = 0, tasks: list[str] | None = None, rank: int = 0,
                 world_size: int = 1, seed: int = 0) -> None:
        prompts = split_prompts(suite, TRAIN_SPLIT, first_state=first_state)
        if tasks is not None:
            keep = set(select_train_tasks(suite, tasks))
            prompts = [p for p in prompts if p.task_index in keep]
        if not prompts:
            raise ValueError(f"no training prompts: every train task has <= {first_state} initial states "
                             "(`--model.train_first_state` too high?)")
        self.prompts = prompts[rank::world_size] or prompts
        self.index = {p: i for i, p in enumerate(self.prompts)}
        self.generator = torch.Generator().manual_seed(seed * 1_000 + rank)

    def weights(self) -> torch.Tensor:
        return torch.ones(len(self.prompts))

    def draw(self, n: int) -> list[Prompt]:
        weights = self.weights()
        idx = torch.multinomial(weights, n, replacement=n > len(self.prompts), generator=self.generator)
        return [self.prompts[i] for i in idx.tolist()]

    def update(self, prompt: Prompt, successes: int, trials: int) -> None:
        """Outcome feedback (unused by uniform sampling)."""


class SuccessAwarePromptSampler(PromptSampler):
    """Draws prompts likely to give *mixed* groups more often.

    Per prompt it tracks, with exponential forgetting (``decay`` per visit),
    the recent success rate and the recent rate of mixed groups. A suite has
    hundreds of prompts (tasks x initial states) and a run visits each only a
    few times, so a prompt's estimate backs off to its *task's* mixed rate
    (initial states of one task behave alike): ``(mixed_i + k * task_rate) /
    (visits_i + k)`` with ``k = task_prior``. The task rate also forgets
    (``task_decay`` per visit of the task) and starts from one optimistic
    "mixed" pseudo-observation, so untried tasks are tried first. Prompts are
    drawn in proportion to that rate to the power ``sharpness``, plus a
    ``floor`` (solved and hopeless prompts are still revisited now and then,
    since the policy changes), without replacement within a draw.

    Why ``sharpness = 2``: a run visits each task only a few times, so the
    estimates stay close together, and drawing in proportion to the plain rate
    barely prefers the mixed tasks. ``benchmarks/rollout.py`` (1-demo SFT
    policy, 18 tabletop tasks, 240 groups per sampler) measured discarded
    fractions of 0.40 with power 2 and 0.38 with 4, against 0.56 for uniform
    draws; 4 drew the top 5 tasks in 59% of the draws (2: 47%), for little
    gain, and a run that trains on fewer tasks learns fewer. Replaying the
    measured per-task rates in a simulation predicted more (0.64 / 0.47 of
    uniform for 2 / 4), so the estimates are noisier than the simulation's.

    Why the observed mixed rate and not ``1 - p^G - (1-p)^G`` of an estimated
    success rate ``p``: near 0 or 1 that formula is dominated by the prior (a
    prompt solved 40/40 times still gets ``p`` ~ 0.98 and a ~15% mixed chance),
    so it keeps drawing solved prompts; the mixed rate falls off geometrically.

    Args:
        group_size: G.
        decay: weight kept by a prompt's old outcomes each time it is rolled out.
        floor: minimum weight of any prompt.
        task_decay: weight kept by a task's old outcomes each time one of its prompts is rolled out.
        task_prior: pseudo-visits of the task's rate in a prompt's estimate.
        sharpness: power of the estimated mixed rate in the draw weights.
    """

    def __init__(self, suite: Suite, *, group_size: int, decay: float = 0.7, floor: float = 0.02,
                 task_decay: float = 0.9, task_prior: float = 1.0, sharpness: float = 2.0, first_state: int = 0,
                 tasks: list[str] | None = None, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        super().__init__(suite, first_state=first_state, tasks=tasks, rank=rank, world_size=world_size, seed=seed)
        self.group_size = group_size
        self.decay = decay
        self.floor = floor
        self.task_decay = task_decay
        self.task_prior = task_prior
        self.sharpness = sharpness
        n = len(self.prompts)
        self.successes, self.trials = torch.zeros(n), torch.zeros(n)
        self.mixed, self.visits = torch.zeros(n), torch.zeros(n)
        task_ids = sorted({p.task_index for p in self.prompts})
        self.task_of = torch.tensor([task_ids.index(p.task_index) for p in self.prompts])
        self.task_mixed, self.task_visits = torch.ones(len(task_ids)), torch.ones(len(task_ids))

    def success_rate(self) -> torch.Tensor:
        """Recent success rate of every prompt (0.5 for unseen ones)."""
        return (self.successes + 1) / (self.trials + 2)

    def weights(self) -> torch.Tensor:
        task_rate = (self.task_mixed / self.task_visits)[self.task_of]
        k = self.task_prior
        return ((self.mixed + k * task_rate) / (self.visits + k)) ** self.sharpness + self.floor

    def update(self, prompt: Prompt, successes: int, trials: int) -> None:
        i = self.index.get(prompt)
        if i is None:
            return
        d = self.decay
        self.successes[i] = d * self.successes[i] + successes
        self.trials[i] = d * self.trials[i] + trials
        mixed = float(0 < successes < trials)
        self.mixed[i] = d * self.mixed[i] + mixed
        self.visits[i] = d * self.visits[i] + 1
        t, dt = self.task_of[i], self.task_decay
        self.task_mixed[t] = dt * self.task_mixed[t] + mixed
        self.task_visits[t] = dt * self.task_visits[t] + 1


class ThompsonPromptSampler(SuccessAwarePromptSampler):
    """Thompson sampling over tasks, then :class:`SuccessAwarePromptSampler`'s weights within the task.

    Each prompt of a draw samples every task's mixed-group rate from a Beta
    posterior on that task's forgetting counts, ``Beta(1 + mixed_t, 1 +
    visits_t - mixed_t)`` (an untried task starts at one optimistic mixed
    visit: ``Beta(2, 1)``), and takes the task with the highest sample; within
    it, a prompt (initial state) is drawn in proportion to its estimated mixed
    rate, without replacement within the draw. Tasks that give mixed groups
    are drawn most; since the counts forget (``task_decay`` per visit), a task
    that the policy has solved or abandoned drops off and others get their
    turn, and a posterior that stays wide keeps every task tried now and then.

    Why on tasks and not on prompts: a suite has hundreds of (task, state)
    prompts and a run visits each only a few times, so a prompt's own
    posterior stays near its prior, and drawing from hundreds of near-prior
    Betas is close to uniform. Initial states of a task behave alike, so the
    task's counts carry the signal.

    Why ``task_decay = 0.97``: the counts then hold ~33 visits, enough for the
    posteriors to separate within a run. ``benchmarks/rollout.py``'s setting
    (1-demo SFT policy, 18 tabletop tasks, 240 groups): discarded 0.42 of the
    groups with 0.9, 0.30 with 0.97 and 0.29 with 1.0 (no forgetting), against
    0.56 for uniform draws and 0.40 for the success-aware weights; in the
    second half 0.45 / 0.21 / 0.21 against 0.60. With 1.0 one task took 133 of
    the 240 draws (0.97: the top task 67, the top three 147).

    **It learns less than the success-aware weights**: in the quickstart (seed
    0, same SFT checkpoint) it threw away 0.42 x the rollouts but seen greedy
    success went 0.25 -> 0.23 instead of 0.25 -> 0.52. It settles on the tasks
    that give mixed groups early and rarely draws one that starts at 0 and
    would have become learnable (docs/RESULTS.md, "Rollout engine"). Use it
    for curriculum experiments, not as the default.
    """

    def __init__(self, suite: Suite, *, group_size: int, task_decay: float = 0.97, first_state: int = 0,
                 tasks: list[str] | None = None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 **kwargs) -> None:
        super().__init__(suite, group_size=group_size, task_decay=task_decay, first_state=first_state, tasks=tasks,
                         rank=rank, world_size=world_size, seed=seed, **kwargs)
        self.members = [torch.nonzero(self.task_of == t).view(-1) for t in range(len(self.task_mixed))]
        self.rng = np.random.default_rng(seed * 1_000 + rank)

    def draw(self, n: int) -> list[Prompt]:
        # task_mixed / task_visits include the optimistic starting pseudo-visit
        alpha = (self.task_mixed + 1).numpy()
        beta = (self.task_visits - self.task_mixed + 1).numpy()
        weights = self.weights()
        taken = torch.zeros(len(self.prompts), dtype=torch.bool)
        out = []
        for _ in range(n):
            task = int(np.argmax(self.rng.beta(alpha, beta)))
            members = self.members[task]
            free = members[~taken[members]]
            pool = free if len(free) else members
            i = int(pool[torch.multinomial(weights[pool], 1, generator=self.generator)])
            taken[i] = True
            out.append(self.prompts[i])
        return out


def prompt_reset_td(prompts: list[Prompt], group_ids: list[int]) -> TensorDict:
    """The ``[len(prompts)]`` reset input of a suite env: each sub-env's task, initial state and group id."""

    def col(values):
        return torch.tensor(values, dtype=torch.int64).view(-1, 1)

    return TensorDict(
        {
            TASK_INDEX_KEY: col([p.task_index for p in prompts]),
            INIT_STATE_KEY: col([p.init_state_id for p in prompts]),
            GROUP_ID_KEY: col(group_ids),
        },
        batch_size=[len(prompts)],
    )


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, max(1, min(n, k)) + 1) if n % d == 0)


class GroupedRollout:
    """Rolls out batches of prompts on the suite's envs, in worker processes.

    With ``num_workers > 1`` the ``num_envs`` sub-envs are spread over a
    :class:`~vla_grpo.simpool.SimulatorPool` of batched suite envs (each worker
    steps its share of the chunks and renders its frames; why not TorchRL's
    ``ParallelEnv`` is in that module); the policy is called once per decision
    on the still-running episodes of all workers. A worker that dies or stops
    answering for ``worker_timeout_s`` is restarted and the round re-run, so a
    partial trajectory never leaves :meth:`run`.

    Args:
        suite: the task suite.
        num_envs: sub-envs in all (``prompts_per_round * group_size``).
        chunk_size: actions executed open-loop per decision.
        num_workers: simulator processes (1 = in this process); lowered to a
            divisor of ``num_envs``.
        seed: env seed.
        worker_timeout_s: seconds without an answer after which a worker is
            declared hung.
        max_restarts: restarts per round before giving up.
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
        self.restarts = 0
        self.last_env_steps_per_s = 0.0
        self.last_decisions_per_s = 0.0
        self.env = None  # the in-process env or the worker pool, built on the first run

    def _make_env(self):
        if self.num_workers == 1:
            return self.suite.make_env(self.num_envs, chunk_size=self.chunk_size, seed=self.seed)
        return SimulatorPool(self.suite, num_envs=self.num_envs, chunk_size=self.chunk_size,
                             num_workers=self.num_workers, seed=self.seed, timeout_s=self.worker_timeout_s)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the simulator workers (empty when in-process or not started)."""
        return self.env.pids if isinstance(self.env, SimulatorPool) else []

    def close(self) -> None:
        if self.env is not None and not self.env.is_closed:
            self.env.close()
        self.env = None

    def _restart(self, err: BaseException) -> None:
        self.restarts += 1
        warnings.warn(f"rollout worker failed ({type(err).__name__}: {str(err)[:200]}); "
                      f"restarting the simulators and re-running the round (restart {self.restarts})",
                      stacklevel=3)
        self.close()

    @torch.no_grad()
    def run(self, policy, prompts: list[Prompt], group_ids: list[int], *, greedy: bool = False) -> TensorDict:
        """Roll out one episode per sub-env; returns ``[num_envs, T]`` with a ``valid`` mask.

        ``prompts`` and ``group_ids`` have one entry per sub-env. ``valid[i, t]``
        is True up to and including the decision at which episode ``i`` ended.
        """
        if len(prompts) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} prompts (one per sub-env), got {len(prompts)}")
        for attempt in range(self.max_restarts + 1):
            try:
                if self.env is None:
                    self.env = self._make_env()
                return self._run_once(policy, prompts, group_ids, greedy)
            except SimulatorError:
                raise  # the env itself raised: re-running would raise again
            except (RuntimeError, EOFError, OSError, TimeoutError) as err:
                if attempt == self.max_restarts or self.num_workers == 1:
                    raise
                self._restart(err)
        raise AssertionError("unreachable")

    def _run_once(self, policy, prompts, group_ids, greedy: bool) -> TensorDict:
        instructions = prompt_instructions(self.suite, prompts)
        start = time.perf_counter()
        reset = prompt_reset_td(prompts, group_ids)
        if isinstance(self.env, SimulatorPool):
            with _intra_op_threads(_spare_cores(self.num_workers)):
                first = self.env.reset(reset)
                if self.pipeline:
                    data = self._pipelined_loop(policy, greedy, instructions, first)
                else:
                    data = self._pool_loop(_ActiveOnlyActor(policy, greedy, self.num_envs, instructions), first)
        else:
            data = self._loop(_ActiveOnlyActor(policy, greedy, self.num_envs, instructions), self.env.reset(reset))
        elapsed = max(time.perf_counter() - start, 1e-9)
        done = data.get(("next", "done")).squeeze(-1)
        # entries after an episode's end are its frozen final state: valid until first done
        valid = (done.long().cumsum(-1) - done.long()) == 0
        data.set("valid", valid)
        decisions = int(valid.sum())
        self.last_decisions_per_s = decisions / elapsed
        self.last_env_steps_per_s = decisions * self.chunk_size / elapsed
        return data

    def _loop(self, actor, td: TensorDictBase) -> TensorDict:
        """In-process decision loop until every episode is done (or the longest step limit).

        Not ``env.rollout(break_when_all_done=True)``: suite envs freeze
        finished episodes (see ``vla_grpo.envs.base``), so stepping the whole
        batch is safe and keeps every decision's batch the same shape.
        """
        steps = []
        for _ in range(self.max_decisions):
            td = self.env.step(actor(td))
            steps.append(td.exclude("_step"))
            if td.get(("next", "done")).all():
                break
            td = self.env.step_mdp(td)
        return torch.stack(steps, dim=-1)

    def _pool_loop(self, actor, td: TensorDictBase) -> TensorDict:
        """The decision loop over the worker pool: one policy call, then every worker steps its share.

        The instructions stay out of the record (restored from ``task_index``
        where needed); the actor hands them to the policy.
        """
        steps = []
        state_keys = list(td.keys(include_nested=True, leaves_only=True))  # what a step starts from
        for _ in range(self.max_decisions):
            td = actor(td)
            nxt = self.env.step(td.get(ACTION_KEY), ~td.get("done").view(-1))
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
        pool: SimulatorPool = self.env
        half = self.num_workers // 2
        groups = [list(range(half)), list(range(half, self.num_workers))]
        rows = [pool.rows_of(g) for g in groups]
        actors = [_ActiveOnlyActor(policy, greedy, len(r), [instructions[i] for i in r.tolist()]) for r in rows]
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
    simulators, and its OpenMP threads spin-wait between calls: on 2 cores with
    2 workers, 2 policy threads cut the engine from 3,393 to 2,779
    env-steps/s (``benchmarks/rollout.py``'s engine loop, untrained TinyVLA).
    """
    before = torch.get_num_threads()
    if n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class _ActiveOnlyActor:
    """Calls the policy once per decision on the episodes still running.

    Rows of finished episodes get zero actions (the env skips them through its
    ``_step`` mask); their entries are dropped later by the ``valid`` mask.

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
        actions = out.get(VLA_ACTION_KEY).select("tokens", "log_probs", "chunk").to("cpu")
        if not active.all():
            full = TensorDict({k: torch.zeros(self.num_envs, *v.shape[1:], dtype=v.dtype)
                               for k, v in actions.items()}, batch_size=[self.num_envs])
            full[active] = actions
            actions = full
        flat.set(VLA_ACTION_KEY, actions)
        flat.set(ACTION_KEY, actions.get("chunk"))
        return flat.reshape(shape)


def split_trajectories(data: TensorDict, *, first_traj_id: int, tokens_per_decision: int,
                       id_stride: int = 1) -> list[TensorDict]:
    """Cut a ``[N, T]`` rollout into N trajectory TensorDicts of their valid decisions.

    Each decision row gets its trajectory's return (binary success), id and token
    count ``|a_i|``; the last row is marked done. Trajectory ``i`` gets id
    ``first_traj_id + i * id_stride`` (DDP ranks interleave with stride = world size).
    """
    valid = data.get("valid")
    trajs = []
    for i in range(data.shape[0]):
        length = int(valid[i].sum())
        traj = data[i, :length].select(*DECISION_KEYS).clone()
        done = torch.zeros(length, 1, dtype=torch.bool)
        done[-1] = True
        traj.set(("next", "done"), done)
        success = bool(data[i, length - 1].get(("next", SUCCESS_KEY)).any())
        traj.set(RETURN_KEY, torch.full((length, 1), float(success)))
        traj.set(TRAJ_ID_KEY, torch.full((length, 1), first_traj_id + i * id_stride, dtype=torch.int64))
        traj.set(TRAJ_TOKENS_KEY, torch.full((length, 1), length * tokens_per_decision, dtype=torch.int64))
        # the binary success reward, on the decision where it happened
        reward = torch.zeros(length, 1)
        reward[-1] = float(success)
        traj.set(("next", "reward"), reward)
        trajs.append(traj)
    return trajs


class DynamicSamplingBuffer:
    """A ``TensorDictReplayBuffer`` behind TorchRL's ``MCAdvantage`` group transform.

    Trajectories go in one at a time; complete groups with mixed outcomes (or
    every group when ``dynamic_sampling=False``) come out with advantages.
    :meth:`pop_groups` hands out whole groups and keeps the surplus for later.

    Args:
        group_size: trajectories per group (G).
        dynamic_sampling: drop groups whose G returns are all equal.
        capacity: decision rows the buffer can hold.
    """

    def __init__(self, group_size: int, *, dynamic_sampling: bool = True, capacity: int = 50_000) -> None:
        self.transform = MCAdvantage(
            grpo_size=group_size,
            prompt_key=GROUP_ID_KEY,
            trajectory_return="sum",
            # exclusive bounds on the group's mean return: drops all-0 and all-1 groups
            keep_return_bounds=(0.0, 1.0) if dynamic_sampling else None,
        )
        self.buffer = TensorDictReplayBuffer(
            storage=LazyTensorStorage(capacity), transform=self.transform
        )
        self._surplus: list[TensorDict] = []

    def extend(self, trajectories: list[TensorDict]) -> None:
        for traj in trajectories:
            self.buffer.extend(traj)

    def _drain(self) -> None:
        """Move what the transform wrote into the per-group surplus list."""
        if len(self.buffer) == 0:
            return
        rows = self.buffer[:]
        rows = rows.exclude("index") if "index" in rows.keys() else rows
        self.buffer.empty()
        gids = rows.get(GROUP_ID_KEY).view(-1)
        for gid in torch.unique_consecutive(gids).tolist():
            group = rows[gids == gid]
            self._surplus.append(_with_group_std(group))

    @property
    def num_groups(self) -> int:
        self._drain()
        return len(self._surplus)

    def pop_groups(self, k: int) -> TensorDict | None:
        """Up to ``k`` whole groups as one ``[rows]`` TensorDict (None if there are none)."""
        self._drain()
        taken, self._surplus = self._surplus[:k], self._surplus[k:]
        return torch.cat(taken, 0) if taken else None

    def stats(self, reset: bool = True) -> dict[str, float]:
        stats = self.transform.get_stats()
        if reset:
            self.transform.reset_stats()
        return stats


def prompt_instructions(suite: Suite, prompts: list[Prompt]) -> list[str]:
    """The language instruction of each prompt's task."""
    tasks = suite.all_tasks()
    return [tasks[p.task_index].instruction for p in prompts]


def attach_instructions(suite: Suite, td: TensorDict) -> TensorDict:
    """Sets ``language_instruction`` of each row from its ``task_index``."""
    tasks = suite.all_tasks()
    index = td.get(TASK_INDEX_KEY).view(-1).tolist()
    td.set("language_instruction", NonTensorStack(*[tasks[i].instruction for i in index]))
    return td


def _with_group_std(group: TensorDict) -> TensorDict:
    """Writes the std of the group's trajectory returns on every row (for Dr.GRPO)."""
    traj_ids = group.get(TRAJ_ID_KEY).view(-1)
    returns = group.get(RETURN_KEY).view(-1)
    per_traj = torch.stack([returns[traj_ids == t][0] for t in torch.unique(traj_ids)])
    std = per_traj.std() if per_traj.numel() > 1 else torch.zeros(())
    group.set(GROUP_STD_KEY, std.expand(group.shape[0], 1).clone())
    return group
