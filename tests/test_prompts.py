"""Prompt samplers: success-aware and Thompson draws against uniform, rank shards and re-sharding,
held-out eval states, ``train_tasks``, a round's members (``vla_grpo.prompts``)."""
from __future__ import annotations

import pytest
import torch

from vla_grpo.envs.tabletop import TabletopSuite
from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.prompts import (
    Prompt,
    PromptSampler,
    SuccessAwarePromptSampler,
    ThompsonPromptSampler,
    repeat_per_member,
)


def _discarded_fraction(sampler, true_p: dict, rounds: int = 300, G: int = 8) -> float:
    gen = torch.Generator().manual_seed(1)
    discarded = 0
    for _ in range(rounds):
        for prompt in sampler.draw(2):
            wins = int((torch.rand(G, generator=gen) < true_p[prompt]).sum())
            sampler.update(prompt, wins, G)
            discarded += wins in (0, G)
    return discarded / (2 * rounds)


AWARE_SAMPLERS = [SuccessAwarePromptSampler, ThompsonPromptSampler]


@pytest.mark.parametrize("sampler_cls", AWARE_SAMPLERS, ids=lambda c: c.__name__)
def test_success_aware_sampler_discards_fewer_groups_than_uniform(sampler_cls):
    suite = ToyReachSuite(num_init_states=4)  # 8 train prompts
    uniform = PromptSampler(suite, seed=0)
    # half the prompts are solved or hopeless (all-equal groups), half are mixed
    true_p = dict(zip(uniform.prompts, [0.0, 0.0, 1.0, 1.0, 0.5, 0.3, 0.7, 0.02], strict=True))
    aware = sampler_cls(suite, group_size=8, seed=0)
    base, ours = _discarded_fraction(uniform, true_p), _discarded_fraction(aware, true_p)
    assert base > 0.4
    assert ours <= 0.5 * base, (ours, base)
    w = aware.weights()
    assert w[4] > 2 * w[0] and w[4] > 2 * w[2]  # mixed prompt above solved and hopeless ones
    assert len({p for _ in range(50) for p in uniform.draw(2)}) == len(uniform.prompts)


@pytest.mark.parametrize("sampler_cls", AWARE_SAMPLERS, ids=lambda c: c.__name__)
def test_success_aware_sampler_learns_per_task_when_prompts_are_rarely_revisited(sampler_cls):
    """80 prompts, 40 draws: per-prompt counts stay ~0, so the task's rate has to carry the estimate."""
    suite = ToyReachSuite(num_init_states=40)
    uniform = PromptSampler(suite, seed=0)
    red = suite.task_index("train/red")
    true_p = {p: 0.0 if p.task_index == red else 0.5 for p in uniform.prompts}  # one task hopeless
    aware = sampler_cls(suite, group_size=8, seed=0)
    base, ours = _discarded_fraction(uniform, true_p, rounds=20), _discarded_fraction(aware, true_p, rounds=20)
    assert base > 0.4
    assert ours <= 0.5 * base, (ours, base)


def test_thompson_sampler_follows_the_mixed_task_when_it_moves():
    """The policy changes: a task that gave mixed groups gets solved and another starts giving them."""
    suite = ToyReachSuite(num_init_states=20)
    sampler = ThompsonPromptSampler(suite, group_size=8, seed=0)
    tasks = sorted({p.task_index for p in sampler.prompts})
    first, second = tasks[0], tasks[1]
    phase1 = {p: 0.5 if p.task_index == first else 0.0 for p in sampler.prompts}
    phase2 = {p: 0.5 if p.task_index == second else (1.0 if p.task_index == first else 0.0)
              for p in sampler.prompts}
    _discarded_fraction(sampler, phase1, rounds=60)
    drawn = [p.task_index for _ in range(20) for p in sampler.draw(2)]
    assert drawn.count(first) > 0.6 * len(drawn)
    _discarded_fraction(sampler, phase2, rounds=60)
    drawn = [p.task_index for _ in range(20) for p in sampler.draw(2)]
    assert drawn.count(second) > 0.6 * len(drawn) and drawn.count(first) < 0.2 * len(drawn)
    assert len(set(p for _ in range(5) for p in sampler.draw(2))) > 1  # states within the task vary


def test_ranks_get_disjoint_prompt_shards():
    suite = ToyReachSuite(num_init_states=10)
    a = set(PromptSampler(suite, rank=0, world_size=2).prompts)
    b = set(PromptSampler(suite, rank=1, world_size=2).prompts)
    assert a and b and not a & b


@pytest.mark.parametrize("old_world, new_world", [(2, 1), (2, 3)])
def test_a_checkpoint_on_another_world_size_hands_each_prompt_s_statistics_to_its_new_rank(old_world, new_world):
    suite = TabletopSuite(image_size=16)
    old = [SuccessAwarePromptSampler(suite, group_size=4, rank=r, world_size=old_world) for r in range(old_world)]
    gen = torch.Generator().manual_seed(0)
    for sampler in old:
        for _ in range(5):
            prompts = sampler.draw(4)
            sampler.update_groups(prompts, (torch.rand(4, 4, generator=gen) < 0.5).float())
    stats = {p: (s.successes[i], s.trials[i], s.mixed[i], s.visits[i]) for s in old for i, p in enumerate(s.prompts)}
    states = [s.state_dict() for s in old]
    new = [SuccessAwarePromptSampler(suite, group_size=4, rank=r, world_size=new_world) for r in range(new_world)]
    for sampler in new:
        sampler.load_resharded(states)
        for i, p in enumerate(sampler.prompts):
            assert (sampler.successes[i], sampler.trials[i], sampler.mixed[i], sampler.visits[i]) == stats[p]
    assert sum(float(s.visits.sum()) for s in new) == pytest.approx(sum(float(s.visits.sum()) for s in old))
    # a task's counts: the mean of the old ranks' (each counted its own visits)
    task = new[0].task_ids[0]
    olds = [float(s.task_visits[s.task_ids.index(task)]) for s in old if task in s.task_ids]
    assert float(new[0].task_visits[0]) == pytest.approx(sum(olds) / len(olds))


def test_training_prompts_leave_the_eval_states_out():
    suite = ToyReachSuite(num_init_states=10)
    held_out = PromptSampler(suite, first_state=4)
    assert {p.init_state_id for p in held_out.prompts} == set(range(4, 10))
    assert len(held_out.prompts) == 6 * len(suite.tasks("train"))
    with pytest.raises(ValueError, match="no training prompts"):
        PromptSampler(suite, first_state=10)


def test_train_tasks_keep_named_tasks_and_family_prefixes():
    suite = TabletopSuite(image_size=16)
    sampler = PromptSampler(suite, tasks=["spatial/", "goal/lift_mug"])
    names = {suite.all_tasks()[p.task_index].name for p in sampler.prompts}
    assert names == {t.name for t in suite.tasks("train") if t.family == "spatial"} | {"goal/lift_mug"}
    with pytest.raises(ValueError, match="'goal/lift_bowl' names no train task"):  # an unseen task
        PromptSampler(suite, tasks=["goal/lift_bowl"])


def test_each_prompt_and_its_group_id_repeat_once_per_group_member():
    prompts = [Prompt(3, 1, phrasing=2), Prompt(0, 4)]
    assert repeat_per_member(prompts, [5, 8], 3) == ([prompts[0]] * 3 + [prompts[1]] * 3, [5, 5, 5, 8, 8, 8])
