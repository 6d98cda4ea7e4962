"""GRPOModule's training step in real fits: steps without a mixed group, the row an empty minibatch
scores, skipped non-finite updates, and an exact resume from a checkpoint."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import toy_policy
from vla_grpo.envs.tabletop import TabletopSuite
from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.losses import GRPOLoss
from vla_grpo.policies.tiny import TinyVLAPolicy


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


def test_an_empty_minibatch_of_a_sharded_policy_scores_a_row_of_the_step_at_weight_zero(tmp_path, monkeypatch):
    """Under FSDP a minibatch without rows still runs the policy (every rank joins each layer's
    gather): it scores one decision row the step hands down (with its instruction), at weight 0."""
    import lightning as L

    import vla_grpo.module as module_lib
    from vla_grpo.keys import INSTRUCTION_KEY

    monkeypatch.setattr(module_lib, "is_sharded", lambda policy: True)  # as if FSDP had sharded it
    module = module_lib.GRPOModule(toy_policy(), ToyReachSuite(image_size=16, max_steps=24), group_size=2,
                                   groups_per_step=1, prompts_per_round=2, dynamic_sampling=False,
                                   num_minibatches=32, eval_states_per_task=1)  # more minibatches than rows
    score, scored = module.policy.score, []

    def recording_score(td):
        scored.append((td.shape[0], INSTRUCTION_KEY in td.keys()))
        return score(td)

    module.policy.score = recording_score
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module)
    # one group of 2 episodes of at most 6 decisions a step: most of the 32 minibatches are empty, and
    # each minibatch, empty or not, scored one row with its instruction
    assert trainer.global_step == 2 and scored == [(1, True)] * (2 * 32)
    assert not hasattr(module, "_filler")


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
    module = GRPOModule(toy_policy(), ToyReachSuite(image_size=16, max_steps=24), loss=loss, group_size=8,
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
    module = GRPOModule(toy_policy(3), ToyReachSuite(image_size=16, max_steps=24), group_size=8, groups_per_step=2,
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
