"""Rollout engine: grouped resets, masks, dynamic sampling, worker failures, DDP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import BrokenSimSuite, assert_same_record, make_trajectory
from vla_grpo.envs.tabletop import TabletopSuite
from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.groups import DynamicSamplingBuffer, split_trajectories
from vla_grpo.keys import GROUP_ID_KEY, RETURN_KEY, TRAJ_TOKENS_KEY
from vla_grpo.losses import GRPOLoss
from vla_grpo.policies.tiny import TinyVLAPolicy
from vla_grpo.prompts import Prompt, PromptSampler, SuccessAwarePromptSampler, ThompsonPromptSampler
from vla_grpo.rollout import GroupedRollout, IncompleteEpisodesError
from vla_grpo.simpool import SimulatorError

ROOT = Path(__file__).resolve().parents[1]


def _toy_policy(seed: int = 0) -> TinyVLAPolicy:
    torch.manual_seed(seed)
    return TinyVLAPolicy(action_dim=2, chunk_size=4, state_dim=6, image_size=16, hidden_dim=32,
                         vocab_size=32, temperature=1.6)


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
    data = rollout.run(_toy_policy(), [Prompt(0, i // 8) for i in range(32)], [i // 8 for i in range(32)])
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
        suite, policy, chunk = ToyReachSuite(), _toy_policy(), 4
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
    policy = _toy_policy()
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
            rollout.run(_toy_policy(), [Prompt(0, 0)] * 4, [0] * 4)
        assert rollout.faults == {"died": 0, "hung": 0, "raised": 1}
    finally:
        rollout.close()


def test_a_round_whose_episodes_did_not_end_is_refused():
    rollout = GroupedRollout(ToyReachSuite(max_steps=40), num_envs=4, chunk_size=4)
    rollout.max_decisions = 2  # as if a suite env had overrun its step limit (40 steps = 10 decisions)
    try:
        with pytest.raises(IncompleteEpisodesError, match=r"[1-4] episodes? did not end within 2 decisions"):
            rollout.run(_toy_policy(), [Prompt(0, 0)] * 4, [0] * 4)
    finally:
        rollout.close()


def test_only_mixed_groups_reach_the_buffer_and_surplus_is_kept():
    buf = DynamicSamplingBuffer(group_size=4)
    outcomes = {0: [0, 0, 0, 0], 1: [1, 1, 1, 1], 2: [0, 1, 0, 0], 3: [1, 1, 0, 1]}
    tid = 0
    for gid, succ in outcomes.items():
        for s in succ:
            buf.extend([make_trajectory(group_id=gid, traj_id=tid, length=1 + tid % 3, success=bool(s))])
            tid += 1
    assert buf.num_groups == 2
    stats = buf.stats()
    assert stats["dropped_groups"] == 2 and stats["written_groups"] == 2
    first = buf.pop_groups(1)
    assert set(first[GROUP_ID_KEY].view(-1).tolist()) == {2}
    # advantages: (R - mean) / std with the unbiased std of [0, 1, 0, 0]
    expected = (torch.tensor([0.0, 1, 0, 0]) - 0.25) / torch.tensor([0.0, 1, 0, 0]).std()
    per_traj = [float(first[first["trajectory_id"].view(-1) == t]["advantage"][0]) for t in range(8, 12)]
    assert per_traj == pytest.approx(expected.tolist(), rel=1e-5)
    rest = buf.pop_groups(5)
    assert set(rest[GROUP_ID_KEY].view(-1).tolist()) == {3}
    assert buf.pop_groups(1) is None


def test_popped_groups_carry_their_instructions_and_dropped_ones_are_forgotten():
    buf = DynamicSamplingBuffer(group_size=2)
    asked = {0: "pick up the mug", 1: "lift the mug", 2: "push the plate to the front", 3: "push the plate forward"}
    outcomes = {0: (0, 0), 1: (1, 0)}  # group 0 is dropped (all fail), group 1 kept
    trajs = [make_trajectory(group_id=g, traj_id=2 * g + i, length=2, success=bool(r))
             for g, rs in outcomes.items() for i, r in enumerate(rs)]
    buf.extend(trajs, [asked[i] for i in range(4)])
    assert buf.num_groups == 1
    assert set(buf._instructions) == {2, 3}  # the dropped group's are gone already
    rows = buf.pop_groups(1)
    by_traj = dict(zip(rows["trajectory_id"].view(-1).tolist(), list(rows.get("language_instruction").tolist()), strict=True))
    assert by_traj == {2: asked[2], 3: asked[3]}
    assert not buf._instructions and not buf._open


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


class _Sabotage:
    """Wraps a policy; on its ``at``-th call sends ``sig`` to one simulator worker."""

    def __init__(self, policy, rollout: GroupedRollout, sig: int, at: int = 2) -> None:
        self.policy, self.rollout, self.sig, self.at, self.calls = policy, rollout, sig, at, 0

    def parameters(self):
        return self.policy.parameters()

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
    policy = _Sabotage(_toy_policy(), rollout, sig)
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


def test_two_process_ddp_runs_different_prompts_and_keeps_weights_identical(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "vla_grpo", "fit", "-c", str(ROOT / "conf/toy.yaml"),
           "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=2",
           f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
           "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
           "--trainer.enable_progress_bar=false", "--model.groups_per_step=2", "--model.prompts_per_round=2",
           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
           "--trainer.callbacks.init_args.every_n_train_steps=1", f"--trainer.callbacks.init_args.dirpath={tmp_path}/ckpt",
           "--trainer.callbacks+=tests.ddp_probe.DDPProbe",
           f"--trainer.callbacks.init_args.out_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2
    assert ranks[0]["prompts"] and ranks[1]["prompts"]
    assert not set(map(tuple, ranks[0]["prompts"])) & set(map(tuple, ranks[1]["prompts"]))
    # bit for bit: DDP hands both ranks the same all-reduced gradient for the same weights (one computation)
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], abs=0)
    assert ranks[0]["weights_changed"] and ranks[1]["weights_changed"]
    # the checkpoint (written by rank 0) carries both ranks' samplers and random streams for an exact resume
    resume = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=True)["grpo_resume"]
    assert resume["world_size"] == 2 and len(resume["ranks"]) == 2
    assert not torch.equal(resume["ranks"][0]["rng"][0], resume["ranks"][1]["rng"][0])


def test_steps_without_any_mixed_group_still_count_and_move_no_weight(tmp_path):
    """An untrained policy on the tabletop never succeeds: every group is all-fail and dropped.

    The GRPO step must still count (or ``max_steps`` never comes) and leave the weights alone.
    """
    import lightning as L

    from vla_grpo.module import GRPOModule

    suite = TabletopSuite(image_size=16)
    torch.manual_seed(0)
    policy = TinyVLAPolicy(action_dim=7, chunk_size=8, state_dim=8, image_size=16, hidden_dim=16, vocab_size=32)
    module = GRPOModule(policy, suite, group_size=2, groups_per_step=1, max_rollout_rounds=1,
                        eval_states_per_task=1)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module)
    assert trainer.global_step == 2
    assert module.buffer.stats()["written_groups"] == 0  # nothing was trainable
    # exact: no update ran, so not a bit of any weight may change
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def _snapshot(module) -> tuple[dict, dict]:
    """Copies of the policy's weights and of the optimizer's per-parameter tensors (AdamW's moments)."""
    opt = module.optimizers().optimizer
    return ({k: v.clone() for k, v in module.policy.state_dict().items()},
            {i: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for i, s in opt.state_dict()["state"].items()})


class _NaNOnCalls(GRPOLoss):
    """The real GRPO loss, made NaN on chosen calls; snapshots the weights and optimizer state then."""

    def __init__(self, calls) -> None:
        super().__init__()
        self.calls, self.n, self.module, self.snapshots = set(calls), 0, None, []

    def forward(self, td):
        out = super().forward(td)
        self.n += 1
        if self.n in self.calls:
            out["loss_objective"] = out["loss_objective"] * float("nan")
            self.snapshots.append(_snapshot(self.module))
        return out


def _nan_fit(tmp_path, calls, max_steps: int, max_nonfinite_updates: int = 3):
    import lightning as L

    from vla_grpo.module import GRPOModule

    loss = _NaNOnCalls(calls)
    module = GRPOModule(_toy_policy(), ToyReachSuite(image_size=16, max_steps=24), loss=loss, group_size=8,
                        groups_per_step=2, max_rollout_rounds=3, ppo_epochs=1, num_minibatches=1, lr=3e-3,
                        max_nonfinite_updates=max_nonfinite_updates)
    loss.__dict__["module"] = module  # a plain reference, not a registered submodule (no cycle)
    seen: list[tuple[dict, dict]] = []

    class After(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(_snapshot(pl_module))

    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[After()])
    return module, trainer, loss, seen


def test_a_nan_loss_skips_its_update_and_leaves_weights_and_optimizer_state_alone(tmp_path):
    module, trainer, loss, seen = _nan_fit(tmp_path, calls={2}, max_steps=3)
    trainer.fit(module)
    assert trainer.global_step == 3 and loss.n == 3  # every step had a mixed group to train on
    (weights, state), = loss.snapshots
    after_weights, after_state = seen[1]  # the end of the NaN step
    # exact: the skipped update must not touch a bit of the weights or of AdamW's moments
    for k, v in weights.items():
        torch.testing.assert_close(after_weights[k], v, rtol=0, atol=0)
    assert after_state.keys() == state.keys() and state  # AdamW had moments from step 1; none moved
    for i in state:
        for k in state[i]:
            torch.testing.assert_close(after_state[i][k], state[i][k], rtol=0, atol=0)
    assert module.nonfinite.in_a_row == 0  # step 3 was finite again and trained
    assert any(not torch.equal(seen[2][0][k], after_weights[k]) for k in after_weights)
    assert all(torch.isfinite(v).all() for v in module.policy.state_dict().values())


def test_nan_updates_in_a_row_stop_the_run_with_one_clear_error(tmp_path):
    from vla_grpo.module import NonFiniteUpdatesError

    module, trainer, loss, _ = _nan_fit(tmp_path, calls=range(1, 100), max_steps=10, max_nonfinite_updates=2)
    start = {k: v.clone() for k, v in module.policy.state_dict().items()}
    with pytest.raises(NonFiniteUpdatesError, match=r"^2 updates in a row had a non-finite loss or gradient"):
        trainer.fit(module)
    assert loss.n == 2
    for k, v in module.policy.state_dict().items():
        torch.testing.assert_close(v, start[k], rtol=0, atol=0)


def _resume_fit(tmp_path, max_steps: int, ckpt_path=None, sampling: str = "success_aware"):
    import lightning as L

    from vla_grpo.module import GRPOModule

    L.seed_everything(3)
    module = GRPOModule(_toy_policy(3), ToyReachSuite(image_size=16, max_steps=24), group_size=8, groups_per_step=2,
                        prompts_per_round=3, max_rollout_rounds=3, ppo_epochs=2, num_minibatches=2, lr=3e-3,
                        prompt_sampling=sampling, eval_states_per_task=2)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True,
                                               save_top_k=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[ckpt])
    trainer.fit(module, ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize("sampling", ["success_aware", "thompson"])
def test_a_resumed_run_repeats_the_uninterrupted_one_exactly(tmp_path, sampling):
    """6 steps straight vs 3 steps, a new process state, then resumed from last.ckpt to 6: the
    sampler statistics, surplus groups, ids and random stream travel in the checkpoint (greedy
    evals every 2 steps sit in between and must not shift anything). Bit for bit, because both
    runs do the same computation: one process, the same batches in the same layout, the same
    thread count (another layout would agree to rounding only, see ``tests.helpers``)."""
    straight = _resume_fit(tmp_path / "a", 6, sampling=sampling)
    _resume_fit(tmp_path / "b", 3, sampling=sampling)
    resumed = _resume_fit(tmp_path / "b", 6, ckpt_path=tmp_path / "b" / "ckpt" / "last.ckpt", sampling=sampling)
    assert resumed.global_step == straight.global_step == 6
    for k, v in straight.policy.state_dict().items():
        torch.testing.assert_close(resumed.policy.state_dict()[k], v, rtol=0, atol=0)
    for k, v in straight.sampler.state_dict().items():
        if torch.is_tensor(v):
            torch.testing.assert_close(resumed.sampler.state_dict()[k], v, rtol=0, atol=0)
    assert resumed.group_ids.count == straight.group_ids.count
