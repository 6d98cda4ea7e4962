"""Injected simulator-worker faults (crash, hang, exception, MuJoCo instability) in real rollouts
and real fits on the MuJoCo tabletop: the run goes on, no partial trajectory reaches the buffer,
and the faults are counted and logged (the suite wrapper ``tests.faults.FaultySuite``)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults import FaultySuite, injected
from vla_grpo.envs.tabletop import TabletopSuite
from vla_grpo.groups import unstable_episodes
from vla_grpo.policies.tiny import TinyVLAPolicy
from vla_grpo.prompts import Prompt
from vla_grpo.rollout import GroupedRollout
from vla_grpo.tb import read_scalars

ROOT = Path(__file__).resolve().parents[1]
# conf/grpo_tabletop.yaml shrunk: a 16-px reading policy, 2 simulator workers, 3 steps of 2 groups of 4
TINY_POLICY = ("{action_dim: 7, chunk_size: 4, state_dim: 8, image_size: 16, hidden_dim: 16, vocab_size: 32, "
               "channels: [8, 8, 8, 8], text_dim: 16, pretrained_path: null}")


def _policy() -> TinyVLAPolicy:
    return TinyVLAPolicy(action_dim=7, chunk_size=4, state_dim=8, image_size=16, hidden_dim=16, vocab_size=32)


@pytest.mark.parametrize("kind, counted", [("crash", "died"), ("hang", "hung"), ("exception", "raised")])
def test_one_injected_fault_restarts_the_workers_once_and_the_round_comes_back_whole(
        tmp_path, kind, counted):
    log = tmp_path / "faults.jsonl"
    suite = FaultySuite(TabletopSuite(image_size=16), rate=1, kinds=(kind,), max_faults=1, log=log)
    rollout = GroupedRollout(suite, num_envs=4, chunk_size=4, num_workers=2, worker_timeout_s=3)
    try:
        with pytest.warns(UserWarning, match="restarting the simulators"):
            data = rollout.run(_policy(), [Prompt(0, 0)] * 2 + [Prompt(1, 0)] * 2, [0, 0, 1, 1])
    finally:
        rollout.close()
    assert [f["kind"] for f in injected(log)] == [kind]
    assert rollout.faults == {"died": 0, "hung": 0, "raised": 0} | {counted: 1}
    done = data["next", "done"].squeeze(-1)
    last = data["valid"].sum(-1) - 1
    assert all(bool(done[i, int(t)]) for i, t in enumerate(last))  # every episode ran to its end


def test_an_injected_instability_ends_one_episode_as_a_failure_without_a_restart(tmp_path):
    log = tmp_path / "faults.jsonl"
    suite = FaultySuite(TabletopSuite(image_size=16), rate=1, kinds=("unstable",), max_faults=1, log=log)
    rollout = GroupedRollout(suite, num_envs=4, chunk_size=4, num_workers=2)
    try:
        data = rollout.run(_policy(), [Prompt(0, 0)] * 4, [0] * 4)
    finally:
        rollout.close()
    assert [f["kind"] for f in injected(log)] == ["unstable"]
    assert rollout.restarts == 0 and unstable_episodes(data) == 1
    row = int(data["next", "unstable"].squeeze(-1).any(-1).nonzero())
    assert not data["next", "success"][row].any()


@pytest.mark.parametrize("bad, name", [(dict(rate=1.5), "rate"), (dict(rate=-0.1), "rate"),
                                       (dict(kinds=("crash", "melt")), "kinds"), (dict(kinds=()), "kinds"),
                                       (dict(max_faults=-1), "max_faults")])
def test_a_bad_fault_plan_is_one_clear_error(tmp_path, bad, name):
    with pytest.raises(ValueError, match=f"^FaultySuite `{name}` must be"):
        FaultySuite(TabletopSuite(image_size=16), **{"rate": 0.1, "log": str(tmp_path / "f"), **bad})


def test_the_wrapper_is_the_suite_it_wraps_but_for_faults_in_worker_processes(tmp_path):
    """Everything the trainer reads is the wrapped suite's; in the trainer's own process its envs are
    the wrapped suite's too (a crash there would end the run, not test the engine)."""
    inner = TabletopSuite(image_size=16)
    suite = FaultySuite(inner, rate=1, log=str(tmp_path / "f"))
    assert suite.name == inner.name and suite.splits == inner.splits and suite.all_tasks() == inner.all_tasks()
    assert (suite.action_dim, suite.state_dim, suite.image_size) == (inner.action_dim, inner.state_dim, 16)
    assert suite.max_decisions(4) == inner.max_decisions(4) and suite.task(0) == inner.task(0)
    env = suite.make_env(2, chunk_size=4)
    try:
        assert type(env) is type(inner.make_env(2, chunk_size=4))
    finally:
        env.close()
    assert pickle.loads(pickle.dumps(suite)).plan == suite.plan


def _faulty_fit(run: Path, seed: int, rate: float = 0.05, max_faults: int = 3) -> subprocess.CompletedProcess:
    suite = {"class_path": "tests.faults.FaultySuite",
             "init_args": {"suite": {"class_path": "vla_grpo.envs.tabletop.TabletopSuite", "init_args": {"image_size": 16}},
                           "rate": rate, "max_faults": max_faults, "seed": seed, "log": f"{run}/faults.jsonl"}}
    cmd = [sys.executable, "-m", "vla_grpo", "fit", "-c", str(ROOT / "conf/grpo_tabletop.yaml"),
           "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false",
           f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
           "--trainer.callbacks+=tests.fault_probe.BufferAudit", f"--trainer.callbacks.init_args.out={run}/audit.json",
           f"--model.suite={json.dumps(suite)}", f"--model.policy.init_args={TINY_POLICY}",
           "--model.group_size=4", "--model.prompts_per_round=2", "--model.groups_per_step=2",
           "--model.max_rollout_rounds=2", "--model.dynamic_sampling=false", "--model.num_workers=2",
           "--model.eval_splits=[train]", "--model.eval_states_per_task=1", f"--seed_everything={seed}",
           "--model.worker_timeout_s=5", "--model.max_worker_restarts=10"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _check_faulty_fit(run: Path, seed: int) -> dict:
    proc = _faulty_fit(run, seed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.loads((run / "audit.json").read_text())
    faults = injected(run / "faults.jsonl")
    kinds = [f["kind"] for f in faults]
    assert audit["steps"] == 3 and audit["popped_groups"] == 3 * 2
    assert audit["partial_episodes"] == 0 and audit["bad_groups"] == 0 and audit["repeated_trajectories"] == 0
    assert 1 <= len(faults) <= 3
    # each restart has a fault of its kind behind it (two faults in one round are one restart)
    counted = audit["engine_faults"]
    assert counted["died"] <= kinds.count("crash") and counted["hung"] <= kinds.count("hang")
    assert counted["raised"] <= kinds.count("exception")
    if {"crash", "hang", "exception"} & set(kinds):
        assert sum(counted.values()) >= 1
    logged = read_scalars(run)
    assert {"faults/worker_died", "faults/worker_hung", "faults/worker_raised", "rollout/unstable_episodes"} <= set(logged)
    unstable = sum(v for _, v in logged["rollout/unstable_episodes"])
    assert unstable <= kinds.count("unstable")
    return {"kinds": kinds, "restarts": counted, "unstable_logged": unstable}


def test_a_fit_with_injected_worker_faults_finishes_with_whole_groups(tmp_path):
    _check_faulty_fit(tmp_path, seed=0)


@pytest.mark.slow
def test_twenty_fits_with_injected_worker_faults_finish_with_whole_groups(tmp_path):
    seen = [_check_faulty_fit(tmp_path / f"run{i}", seed=i) for i in range(20)]
    kinds = [k for s in seen for k in s["kinds"]]
    print(json.dumps(seen))
    assert {"crash", "hang", "exception", "unstable"} <= set(kinds)  # every kind happened somewhere
