"""Prompts (task, initial state) and the samplers that draw them for GRPO rounds.

A *prompt* is what a GRPO group is rolled out from. Each rank draws from its
own shard of the train split's prompts (``prompts[rank::world_size]``), so DDP
ranks roll out different prompts with their own simulators. The samplers are
picked by name with :func:`make_prompt_sampler` (``--model.prompt_sampling``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from tensordict import TensorDict

from vla_grpo.envs.base import TRAIN_SPLIT, Suite
from vla_grpo.keys import GROUP_ID_KEY, INIT_STATE_KEY, TASK_INDEX_KEY


class Prompt(NamedTuple):
    """A (task, initial state) pair, asked in one of the task's phrasings: what a GRPO group is rolled out from."""

    task_index: int
    init_state_id: int
    phrasing: int = 0

    @property
    def state(self) -> Prompt:
        """The (task, initial state) without the phrasing: what outcome statistics are kept for."""
        return Prompt(self.task_index, self.init_state_id)


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


def prompt_instructions(suite: Suite, prompts: list[Prompt]) -> list[str]:
    """The language instruction of each prompt: its task's phrasing ``prompt.phrasing``."""
    tasks = suite.all_tasks()
    return [tasks[p.task_index].phrasing(p.phrasing) for p in prompts]


def repeat_per_member(prompts: list[Prompt], group_ids: list[int], group_size: int) -> tuple[list[Prompt], list[int]]:
    """One entry per sub-env: each prompt and its group id, ``group_size`` times in a row (a group's members)."""
    return ([p for p in prompts for _ in range(group_size)],
            [g for g in group_ids for _ in range(group_size)])


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


class PromptSampler:
    """Uniform prompt draws from this rank's shard of the train split.

    ``first_state`` leaves each task's initial states below it out (the greedy
    eval's states); ``tasks`` keeps only the named train tasks. Each drawn
    prompt is asked in one of its task's training phrasings, uniformly (a
    generator of its own, so the prompt draws don't depend on how many there are).
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
        self.all_prompts = prompts  # every rank's, in shard order: resharding a checkpoint maps through it
        self.prompts = self._shard(rank, world_size)
        self.index = {p: i for i, p in enumerate(self.prompts)}
        self.num_phrasings = [t.num_phrasings for t in suite.all_tasks()]
        self.generator = torch.Generator().manual_seed(seed * 1_000 + rank)
        self.phrasing_generator = torch.Generator().manual_seed(seed * 1_000 + rank + 500)

    def _shard(self, rank: int, world_size: int) -> list[Prompt]:
        """Rank ``rank``'s prompts out of ``world_size`` (all of them when there are fewer prompts than ranks)."""
        return self.all_prompts[rank::world_size] or self.all_prompts

    def weights(self) -> torch.Tensor:
        return torch.ones(len(self.prompts))

    def _choose(self, indices: list[int]) -> list[Prompt]:
        """The prompts at ``indices``, each with a phrasing drawn for it."""
        out = []
        for i in indices:
            prompt = self.prompts[i]
            k = self.num_phrasings[prompt.task_index]
            phrasing = int(torch.randint(k, (1,), generator=self.phrasing_generator)) if k > 1 else 0
            out.append(prompt._replace(phrasing=phrasing))
        return out

    def draw(self, n: int) -> list[Prompt]:
        weights = self.weights()
        idx = torch.multinomial(weights, n, replacement=n > len(self.prompts), generator=self.generator)
        return self._choose(idx.tolist())

    def update(self, prompt: Prompt, successes: int, trials: int) -> None:
        """Outcome feedback of one group (unused by uniform sampling)."""

    def update_groups(self, prompts: list[Prompt], returns: torch.Tensor) -> None:
        """Outcome feedback of a round: ``returns[i]`` holds the G binary returns of ``prompts[i]``'s group."""
        for prompt, group in zip(prompts, returns, strict=True):
            self.update(prompt, int(group.sum()), group.numel())

    # -- resume ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """What decides the next draws: the generators' states and (subclasses) the outcome statistics."""
        return {"generator": self.generator.get_state(), "phrasing_generator": self.phrasing_generator.get_state(),
                "num_prompts": len(self.prompts)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_prompts"] != len(self.prompts):
            raise ValueError(f"the checkpoint's prompt sampler held {state['num_prompts']} prompts on this rank, "
                             f"this run has {len(self.prompts)} (another suite, train_tasks, world size or "
                             "eval_states_per_task?)")
        self.generator.set_state(state["generator"])
        self.phrasing_generator.set_state(state["phrasing_generator"])

    def load_resharded(self, states: list[dict]) -> None:
        """Take over what ``len(states)`` ranks learned about this rank's prompts (a checkpoint resumed on
        another world size); the generators stay this rank's own. Uniform draws learn nothing."""
        for r, state in enumerate(states):
            if state["num_prompts"] != len(self._shard(r, len(states))):
                raise ValueError(f"the checkpoint's rank {r} held {state['num_prompts']} prompts, this run's split "
                                 f"gives it {len(self._shard(r, len(states)))} (another suite or train_tasks?)")


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

    Why ``sharpness = 2``: the estimates stay close together within a run, so
    drawing in proportion to the plain rate barely prefers the mixed tasks;
    a higher power concentrates the draws on a few tasks, and a run that trains
    on fewer tasks learns fewer (measurements: docs/experiments/rollout_engine.md).

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
        self.task_ids = sorted({p.task_index for p in self.prompts})
        self.task_of = torch.tensor([self.task_ids.index(p.task_index) for p in self.prompts])
        self.task_mixed, self.task_visits = torch.ones(len(self.task_ids)), torch.ones(len(self.task_ids))

    def success_rate(self) -> torch.Tensor:
        """Recent success rate of every prompt (0.5 for unseen ones)."""
        return (self.successes + 1) / (self.trials + 2)

    def weights(self) -> torch.Tensor:
        task_rate = (self.task_mixed / self.task_visits)[self.task_of]
        k = self.task_prior
        return ((self.mixed + k * task_rate) / (self.visits + k)) ** self.sharpness + self.floor

    _PROMPT_STATS = ("successes", "trials", "mixed", "visits")  # one value per prompt
    _TASK_STATS = ("task_mixed", "task_visits")  # one value per task of the rank's shard
    _STATS = _PROMPT_STATS + _TASK_STATS

    def state_dict(self) -> dict:
        return {**super().state_dict(), **{k: getattr(self, k).clone() for k in self._STATS}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for k in self._STATS:
            getattr(self, k).copy_(state[k])

    def load_resharded(self, states: list[dict]) -> None:
        """Each prompt's statistics come from the rank that held it; a task's forgetting counts are
        the mean over the old ranks that held some of its prompts (each rank counted its own visits)."""
        super().load_resharded(states)
        world, where, tasks = len(states), {}, {}
        for r in range(world):
            shard = self._shard(r, world)
            for i, p in enumerate(shard):
                where.setdefault(p, (r, i))
            for pos, t in enumerate(sorted({p.task_index for p in shard})):
                tasks.setdefault(t, []).append((r, pos))
        for j, p in enumerate(self.prompts):
            r, i = where[p]
            for k in self._PROMPT_STATS:
                getattr(self, k)[j] = states[r][k][i]
        for pos, t in enumerate(self.task_ids):
            for k in self._TASK_STATS:
                getattr(self, k)[pos] = torch.stack([states[r][k][q] for r, q in tasks[t]]).mean()

    def update(self, prompt: Prompt, successes: int, trials: int) -> None:
        i = self.index.get(prompt.state)
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

    Why on tasks and not on prompts: a run visits each (task, state) prompt
    only a few times, so a prompt's own posterior stays near its prior and
    drawing from hundreds of near-prior Betas is close to uniform. Initial
    states of a task behave alike, so the task's counts carry the signal.

    Why ``task_decay = 0.97``: the counts then hold ~33 visits, enough for the
    posteriors to separate within a run, while a task the policy has moved past
    still drops off.

    It discards fewer groups than the success-aware weights but **learned
    less** in the quickstart: it settles on the tasks that give mixed groups
    early and rarely draws one that starts at 0 and would have become
    learnable (docs/experiments/rollout_engine.md). Use it for curriculum
    experiments, not as the default.
    """

    def __init__(self, suite: Suite, *, group_size: int, task_decay: float = 0.97, first_state: int = 0,
                 tasks: list[str] | None = None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 **kwargs) -> None:
        super().__init__(suite, group_size=group_size, task_decay=task_decay, first_state=first_state, tasks=tasks,
                         rank=rank, world_size=world_size, seed=seed, **kwargs)
        self.members = [torch.nonzero(self.task_of == t).view(-1) for t in range(len(self.task_mixed))]
        self.rng = np.random.default_rng(seed * 1_000 + rank)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rng.bit_generator.state = state["rng"]

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
            out.append(i)
        return self._choose(out)


#: ``--model.prompt_sampling`` values
PROMPT_SAMPLERS: dict[str, type[PromptSampler]] = {
    "success_aware": SuccessAwarePromptSampler,
    "thompson": ThompsonPromptSampler,
    "uniform": PromptSampler,
}


def make_prompt_sampler(name: str, suite: Suite, *, group_size: int, first_state: int = 0,
                        tasks: list[str] | None = None, rank: int = 0, world_size: int = 1,
                        seed: int = 0) -> PromptSampler:
    """The sampler called ``name`` in :data:`PROMPT_SAMPLERS`, on this rank's shard of the train prompts."""
    if name not in PROMPT_SAMPLERS:
        raise ValueError(f"`--model.prompt_sampling` must be one of {', '.join(map(repr, PROMPT_SAMPLERS))} "
                         f"(got {name!r})")
    shard = dict(first_state=first_state, tasks=tasks, rank=rank, world_size=world_size, seed=seed)
    cls = PROMPT_SAMPLERS[name]
    return cls(suite, **shard) if cls is PromptSampler else cls(suite, group_size=group_size, **shard)


__all__ = [
    "PROMPT_SAMPLERS", "Prompt", "PromptSampler", "SuccessAwarePromptSampler", "ThompsonPromptSampler",
    "make_prompt_sampler", "prompt_instructions", "prompt_reset_td", "repeat_per_member", "select_train_tasks",
    "split_prompts",
]
