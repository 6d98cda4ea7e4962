"""The evaluation engine: padded batches, rank shards, lockstep batch counts, per-task counts, the table, reports."""
from __future__ import annotations

import io

import pytest
import torch

from vla_grpo.callbacks import SplitEvaluation
from vla_grpo.callbacks.split_eval import result_table
from vla_grpo.envs.scene.evaluate import (
    SplitResult,
    count_by_task,
    expert_success,
    padded_batches,
    play_batches,
    render_table,
)
from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.evaluation import EvalSpec, lockstep_batches, run_greedy
from vla_grpo.keys import IMAGE_KEY
from vla_grpo.policies.tiny import TinyVLAPolicy
from vla_grpo.rollout import GroupedRollout

RESULT = SplitResult(step=3, stage="fit", counts={"train": {"red": (1, 2), "green": (2, 2)},
                                                  "unseen_layout": {"red": (0, 2)}})


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    suite = ToyReachSuite(image_size=16, max_steps=24)
    policy = TinyVLAPolicy(action_dim=2, chunk_size=4, state_dim=6, image_size=16, hidden_dim=64, vocab_size=32)
    rollout = GroupedRollout(suite, num_envs=4, chunk_size=4)
    yield suite, policy, rollout
    rollout.close()


def test_padded_batches_fill_the_last_batch_with_its_last_job_and_lockstep_batches_with_the_filler():
    assert list(padded_batches("abcde", 2)) == [(["a", "b"], 2), (["c", "d"], 2), (["e", "e"], 1)]
    assert list(padded_batches("abc", 3, num_batches=2, filler="z")) == [(["a", "b", "c"], 3), (["z"] * 3, 0)]
    assert list(padded_batches("", 2, num_batches=1, filler="z")) == [(["z", "z"], 0)]
    with pytest.raises(ValueError, match="num_batches=1 is fewer than the 2 batches"):
        list(padded_batches("abc", 2, num_batches=1))
    # the padding's outcomes are dropped; on_batch sees each batch's real outcomes
    seen = []
    assert play_batches("abcde", 2, lambda b: [x.upper() for x in b], on_batch=seen.append) == list("ABCDE")
    assert seen == [["A", "B"], ["C", "D"], ["E"]]


def test_rank_shards_cover_every_episode_once_with_the_outcomes_of_one_process(toy):
    suite, policy, rollout = toy
    items = EvalSpec(None, 5, 4).items(suite)  # 2 splits x 2 tasks x 5 states = 20
    whole = run_greedy(rollout, policy, items)
    assert whole.items == items and whole.batches == 5
    shards = [run_greedy(rollout, policy, items, rank=r, world_size=3) for r in range(3)]
    assert [len(s.items) for s in shards] == [7, 7, 6]
    got = {it: ok for s in shards for it, ok in zip(s.items, s.success, strict=True)}
    assert sorted(got) == sorted(items)  # every episode once, none twice (the dict would hide a repeat)
    assert sum(len(s.items) for s in shards) == len(items)
    # the same episodes in other batches: the same outcomes (no logit of this seeded policy sits on a
    # bin boundary, where another batch shape could round it the other way)
    assert [got[it] for it in items] == whole.success


def test_lockstep_ranks_run_as_many_batches_as_the_largest_shard(toy):
    """An FSDP policy gathers its weights for each rollout batch on all ranks together: a rank whose
    shard needs fewer batches runs (and discards) more, instead of leaving the others waiting."""
    suite, policy, rollout = toy
    items = EvalSpec(None, 3, 4).items(suite)[:9]  # shards of 5 and 4 items: 2 and 1 batches of 4
    assert lockstep_batches(9, 2, 4) == 2
    for lockstep, expected in ((False, [2, 1]), (True, [2, 2])):
        runs = [run_greedy(rollout, policy, items, rank=r, world_size=2, lockstep=lockstep) for r in range(2)]
        assert [r.batches for r in runs] == expected
        assert [len(r.success) for r in runs] == [5, 4]


def test_frames_come_with_the_same_outcomes_and_end_on_the_last_observation(toy):
    suite, policy, rollout = toy
    items = EvalSpec(["train"], 3, 4).items(suite)
    plain = run_greedy(rollout, policy, items)
    filmed = run_greedy(rollout, policy, items, frames=True)
    assert plain.frames is None and filmed.success == plain.success
    data = rollout.run(policy, [it.prompt for it in items[:4]], list(range(4)), greedy=True)
    length = int(data.get("valid")[0].sum())
    assert filmed.frames[0].shape == (length + 1, 16, 16, 3)
    assert (filmed.frames[0][-1] == data.get(("next", *IMAGE_KEY))[0, length - 1].permute(1, 2, 0).numpy()).all()


def test_per_task_counts_and_the_result_type():
    suite = ToyReachSuite(image_size=16)
    red, green, unseen_red = (suite.task_index(n) for n in ("train/red", "train/green", "unseen_layout/red"))
    tasks, success = [red, red, green, green, unseen_red, unseen_red], [True, False, True, True, False, False]
    assert count_by_task(suite, tasks, success)[[red, green, unseen_red]].tolist() == [[1, 2], [2, 2], [0, 2]]
    result = SplitResult.from_outcomes(suite, tasks, success, step=3, stage="fit")
    assert result == RESULT  # task names without their split's prefix, tasks never played left out
    assert result.split_counts() == {"train": (3, 4), "unseen_layout": (0, 2)}
    assert result.metrics() == {"eval/train/success": 0.75, "eval/unseen_layout/success": 0.0,
                                "eval/train/red": 0.5, "eval/train/green": 1.0, "eval/unseen_layout/red": 0.0}
    full = SplitResult.from_outcomes(suite, tasks, success, full_names=True)
    assert list(full.counts["train"]) == ["train/red", "train/green"]
    # the eval history as today's checkpoints hold it still loads
    stored = {"results": [{"step": 3, "stage": "fit", "counts": {"train": {"red": [1, 2], "green": [2, 2]},
                                                                 "unseen_layout": {"red": [0, 2]}}}]}
    cb = SplitEvaluation()
    cb.load_state_dict(stored)
    assert cb.results == [RESULT] and cb.state_dict() == stored


def test_one_renderer_draws_the_markdown_and_the_rich_table():
    assert render_table(RESULT, title="step 3 (fit)") == "\n".join([
        "step 3 (fit)", "",
        "| split | task | success | episodes |",
        "|---|---|---:|---:|",
        "| **train** | **all** | **0.750** | 4 |",
        "| train | red | 0.500 | 2 |",
        "| train | green | 1.000 | 2 |",
        "| **unseen_layout** | **all** | **0.000** | 2 |",
        "| unseen_layout | red | 0.000 | 2 |",
    ])
    from rich.console import Console

    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(result_table(RESULT, caption="checkpoint: last.ckpt"))
    assert [line.rstrip() for line in console.file.getvalue().splitlines()] == [
        "greedy eval (fit, step 3, 6 episodes)",
        "┏━━━━━━━━━━━━━━━┳━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━┓",
        "┃ split         ┃ task  ┃ success ┃ episodes ┃",
        "┡━━━━━━━━━━━━━━━╇━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━┩",
        "│ train         │ all   │   0.750 │        4 │",
        "│               │ red   │   0.500 │        2 │",
        "│               │ green │   1.000 │        2 │",
        "├───────────────┼───────┼─────────┼──────────┤",
        "│ unseen_layout │ all   │   0.000 │        2 │",
        "│               │ red   │   0.000 │        2 │",
        "└───────────────┴───────┴─────────┴──────────┘",
        "checkpoint: last.ckpt",
    ]


def test_the_expert_report_prints_the_engine_s_counts_in_the_asked_task_order(capsys):
    from vla_grpo.envs.tabletop import TabletopSuite
    from vla_grpo.envs.tabletop.__main__ import main

    suite = TabletopSuite()
    asked = ["spatial/behind_mug", "goal/lift_mug"]  # an unseen task first: the rows keep this order
    main(["--states", "2", "--tasks", ",".join(asked), "--num-envs", "3"])
    lines = capsys.readouterr().out.splitlines()
    results = expert_success(suite, [suite.task_index(t) for t in asked], [0, 1], num_envs=3)
    assert lines[:2] == ["| task | split | success | mean steps | max steps | limit |", "|---|---|---|---|---|---|"]
    for line, name in zip(lines[2:4], asked, strict=True):
        spec, r = suite.all_tasks()[suite.task_index(name)], results[suite.task_index(name)]
        assert line == (f"| {name} | {spec.split} | {sum(r.successes)}/2 ({50 * sum(r.successes):.0f}%) "
                        f"| {sum(r.steps) / 2:.0f} | {max(r.steps)} | {spec.max_steps} |")
    total = sum(sum(r.successes) for r in results.values())
    assert len(lines) == 5 and lines[4].startswith(f"overall {total}/4 ({25 * total:.1f}%) in ")
