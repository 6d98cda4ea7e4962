"""The rollout engine: grouped resets, valid masks, round records, the in-process, worker and pipelined
backends, refused rounds and worker failures (``vla_grpo.rollout``, ``vla_grpo.simpool``)."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.helpers import BrokenSimSuite, assert_same_record, toy_policy
from vla_grpo.envs.tabletop import TabletopSuite
from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.groups import DynamicSamplingBuffer, split_trajectories
from vla_grpo.keys import GROUP_ID_KEY, RETURN_KEY, TRAJ_TOKENS_KEY
from vla_grpo.policies.tiny import TinyVLAPolicy
from vla_grpo.prompts import Prompt
from vla_grpo.rollout import GroupedRollout, IncompleteEpisodesError
from vla_grpo.simpool import SimulatorError


def test_group_members_start_from_the_same_state():
    suite = TabletopSuite(image_size=32)
    torch.manual_seed(0)
    policy = TinyVLAPolicy(action_dim=7, chunk_size=8, state_dim=suite.state_dim, image_size=32, hidden_dim=32)
    rollout = GroupedRollout(suite, num_envs=6, chunk_size=8)
    try:
        prompts = [Prompt(0, 3)] * 3 + [Prompt(0, 7)] * 3
        data = rollout.run(policy, prompts, [0, 0, 0, 1, 1, 1])
    finally:
        rollout.close()
    first = data[:, 0]["observation", "image"]
    state = data[:, 0]["observation", "state"]
    for group in (slice(0, 3), slice(3, 6)):
        assert (first[group] == first[group][:1]).all() and (state[group] == state[group][:1]).all()
    assert not torch.equal(first[0], first[3])  # another initial state is another scene
    assert (data[:, 0][GROUP_ID_KEY].view(-1) == torch.tensor([0, 0, 0, 1, 1, 1])).all()
    # sampled at temperature 1.6: the G members act differently from the same state
    tokens = data[:, 0]["vla_action", "tokens"]
    assert not torch.equal(tokens[0], tokens[1])


def test_lengths_and_masks_when_episodes_end_at_different_steps():
    suite = ToyReachSuite()
    rollout = GroupedRollout(suite, num_envs=32, chunk_size=4)
    data = rollout.run(toy_policy(), [Prompt(0, i // 8) for i in range(32)], [i // 8 for i in range(32)])
    valid, done = data["valid"], data["next", "done"].squeeze(-1)
    lengths = valid.sum(-1)
    assert len(set(lengths.tolist())) > 1, "episodes should end at different decisions"
    for i in range(32):
        n = int(lengths[i])
        assert valid[i, :n].all() and not valid[i, n:].any()
        assert done[i, n - 1] and not done[i, : n - 1].any()
    trajs = split_trajectories(data, list(range(100, 132)), tokens_per_decision=8)
    for i, traj in enumerate(trajs):
        n = int(lengths[i])
        assert traj.shape == (n,)
        assert traj["next", "done"][-1] and not traj["next", "done"][:-1].any()
        success = bool(data[i, n - 1]["next", "success"])
        assert traj["next", "reward"].sum() == float(success) == float(traj[RETURN_KEY][0])
        assert (traj[TRAJ_TOKENS_KEY] == n * 8).all()
        assert (traj["trajectory_id"] == 100 + i).all()
        assert "language_instruction" not in traj.keys()


def test_a_round_record_carries_its_prompts_ids_and_instructions():
    """``run_round``: G consecutive members per prompt under the group's id, each trajectory's id and
    instruction with it, and the very record ``run`` gives for those members."""
    suite = ToyReachSuite()
    prompts, group_ids, traj_ids = [Prompt(1, 2), Prompt(0, 5)], [7, 9], list(range(100, 108))
    members = [p for p in prompts for _ in range(4)]
    rollout = GroupedRollout(suite, num_envs=8, chunk_size=4)
    try:
        rnd = rollout.run_round(toy_policy(), prompts, group_ids, traj_ids, greedy=True)
        data = rollout.run(toy_policy(), members, [7] * 4 + [9] * 4, greedy=True)
        with pytest.raises(ValueError, match="expected prompts and group ids of one length dividing 8"):
            rollout.run_round(toy_policy(), prompts * 2, group_ids, traj_ids)
    finally:
        rollout.close()
    assert (rnd.prompts, rnd.group_ids, rnd.traj_ids, rnd.group_size) == (prompts, group_ids, traj_ids, 4)
    assert rnd.instructions == [suite.all_tasks()[p.task_index].phrasing(p.phrasing) for p in members]
    assert rnd.data[:, 0][GROUP_ID_KEY].view(-1).tolist() == [7] * 4 + [9] * 4
    # exact: one process, the same policy and batch layout, greedy: the same computation
    keys = sorted(data.keys(include_nested=True, leaves_only=True), key=str)
    assert sorted(rnd.data.keys(include_nested=True, leaves_only=True), key=str) == keys
    for key in keys:
        assert torch.equal(rnd.data[key], data[key]), key


@pytest.mark.parametrize("suite_name", ["toy", "tabletop"])
def test_in_process_and_worker_backends_roll_out_the_same_episodes(suite_name):
    """Same prompts, greedy policy: the in-process pool == 2 simulator processes (sub-envs interleaved).

    Both backends serve the env through one ``EnvServer`` and share the engine's
    loop, so the episodes must be the same, on a real MuJoCo suite too: tokens,
    actions, frames, states, done/success and ids exactly (a rounding difference
    must never flip a greedy action). The policy sees the sub-envs in other batch
    shapes, so its log-probs agree to rounding only (``assert_same_record``).
    """
    if suite_name == "toy":
        suite, policy, chunk = ToyReachSuite(), toy_policy(), 4
        prompts = [Prompt(i % 2, i // 2) for i in range(12)]
    else:
        suite, chunk = TabletopSuite(image_size=16), 8
        torch.manual_seed(0)
        policy = TinyVLAPolicy(action_dim=7, chunk_size=8, state_dim=suite.state_dim, image_size=16,
                               hidden_dim=16, vocab_size=32)
        prompts = [Prompt(i % 3, i // 3) for i in range(12)]
    groups = [i // 4 for i in range(12)]
    data = {}
    for workers in (1, 2):
        rollout = GroupedRollout(suite, num_envs=12, chunk_size=chunk, num_workers=workers)
        try:
            data[workers] = rollout.run(policy, prompts, groups, greedy=True)
            assert len(rollout.worker_pids) == (2 if workers == 2 else 0)
        finally:
            rollout.close()
    one, two = data[1], data[2]
    if suite_name == "toy":
        assert len(set(one["valid"].sum(-1).tolist())) > 1  # episodes of different lengths
    assert_same_record(one, two)


@pytest.mark.parametrize("workers", [2, 4])
def test_pipelined_halves_roll_out_the_same_episodes(workers):
    """Two halves of the workers stepped in turn: the same greedy episodes as one in-process env.

    Entries after an episode's end are padding (``valid`` False) in both; the
    valid decisions and every ``next`` done/success must match: exactly, but for
    the log-probs, which the policy computes over half batches here and so agree
    to rounding only (``assert_same_record``).
    """
    suite = ToyReachSuite()
    policy = toy_policy()
    prompts, groups = [Prompt(i % 2, i // 2) for i in range(16)], [i // 4 for i in range(16)]
    data = {}
    for n, pipeline in ((1, False), (workers, True)):
        rollout = GroupedRollout(suite, num_envs=16, chunk_size=4, num_workers=n, pipeline=pipeline)
        try:
            data[pipeline] = rollout.run(policy, prompts, groups, greedy=True)
        finally:
            rollout.close()
    one, piped = data[False], data[True]
    assert one.shape == piped.shape
    valid = one["valid"]
    assert len(set(valid.sum(-1).tolist())) > 1 and torch.equal(valid, piped["valid"])
    assert_same_record(one, piped, where=valid)
    for key in (("next", "done"), ("next", "success")):
        assert torch.equal(one[key], piped[key]), key


def test_an_env_error_every_time_is_retried_max_restarts_times_then_raised():
    rollout = GroupedRollout(BrokenSimSuite(), num_envs=4, chunk_size=4, num_workers=2, max_restarts=1)
    try:
        with pytest.warns(UserWarning, match="restart 1"), \
                pytest.raises(SimulatorError, match="simulator worker [01] failed(.|\n)*the simulation diverged"):
            rollout.run(toy_policy(), [Prompt(0, 0)] * 4, [0] * 4)
        assert rollout.faults == {"died": 0, "hung": 0, "raised": 1}
    finally:
        rollout.close()


def test_a_round_whose_episodes_did_not_end_is_refused():
    rollout = GroupedRollout(ToyReachSuite(max_steps=40), num_envs=4, chunk_size=4)
    rollout.max_decisions = 2  # as if a suite env had overrun its step limit (40 steps = 10 decisions)
    try:
        with pytest.raises(IncompleteEpisodesError, match=r"[1-4] episodes? did not end within 2 decisions"):
            rollout.run(toy_policy(), [Prompt(0, 0)] * 4, [0] * 4)
    finally:
        rollout.close()


class _Sabotage:
    """Wraps a policy; on its ``at``-th call sends ``sig`` to one simulator worker."""

    def __init__(self, policy, rollout: GroupedRollout, sig: int, at: int = 2) -> None:
        self.policy, self.rollout, self.sig, self.at, self.calls = policy, rollout, sig, at, 0

    def parameters(self):
        return self.policy.parameters()

    @property
    def action_record_keys(self):
        return self.policy.action_record_keys

    def act(self, td, greedy=False):
        self.calls += 1
        if self.calls == self.at:
            os.kill(self.rollout.worker_pids[0], self.sig)
        return self.policy.act(td, greedy=greedy)


@pytest.mark.parametrize(
    "sig",
    [signal.SIGKILL, pytest.param(signal.SIGSTOP, marks=pytest.mark.slow)],  # hung: waits out a timeout
    ids=["killed", "hung"],
)
def test_a_dead_or_hung_worker_is_restarted_and_no_partial_trajectory_leaks(sig):
    suite = ToyReachSuite(max_steps=40)
    rollout = GroupedRollout(suite, num_envs=8, chunk_size=4, num_workers=2, worker_timeout_s=5)
    policy = _Sabotage(toy_policy(), rollout, sig)
    try:
        rollout.run(policy.policy, [Prompt(0, 0)] * 8, [0] * 8)  # start the workers
        old_pids = rollout.worker_pids
        with pytest.warns(UserWarning, match="restarting the simulators"):
            data = rollout.run(policy, [Prompt(0, i // 4) for i in range(8)], [i // 4 for i in range(8)])
        assert rollout.restarts == 1 and rollout.worker_pids != old_pids
    finally:
        rollout.close()
    # the re-run round is whole: every episode has a done at its last valid decision
    lengths = data["valid"].sum(-1)
    done = data["next", "done"].squeeze(-1)
    assert all(bool(done[i, int(n) - 1]) for i, n in enumerate(lengths))
    buf = DynamicSamplingBuffer(group_size=4, dynamic_sampling=False)
    buf.extend(split_trajectories(data, list(range(data.shape[0])), tokens_per_decision=8))
    assert buf.num_groups == 2
