"""Every loss: hand-computed reference, sign of the update, zero-variance groups; SFT's imitation loss."""
from __future__ import annotations

import math

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from vla_grpo.keys import (
    ACTION_CHUNK_KEY,
    ACTION_TOKENS_KEY,
    ADVANTAGE_KEY,
    GROUP_STD_KEY,
    LOG_PROBS_KEY,
    PAD_KEY,
    REF_LOG_PROBS_KEY,
    SAMPLE_LOG_PROBS_KEY,
    TRAJ_TOKENS_KEY,
)
from vla_grpo.losses import (
    LOSSES,
    CISPOLoss,
    DAPOLoss,
    DrGRPOLoss,
    GRPOLoss,
    GSPOLoss,
    PPOClipLoss,
    TokenBCLoss,
)

B, H, A = 6, 2, 3


def _batch(seed: int = 0, adv: torch.Tensor | None = None) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, H, A, generator=g) * 3
    new = old + torch.randn(B, H, A, generator=g) * 0.3
    # decisions 0-1 belong to a 2-decision trajectory, 2-5 to a 4-decision one
    traj_tokens = torch.tensor([2, 2, 4, 4, 4, 4]).view(B, 1) * H * A
    return TensorDict(
        {
            LOG_PROBS_KEY: new.requires_grad_(),
            SAMPLE_LOG_PROBS_KEY: old,
            ADVANTAGE_KEY: adv if adv is not None else torch.randn(B, 1, generator=g),
            TRAJ_TOKENS_KEY: traj_tokens,
            GROUP_STD_KEY: torch.full((B, 1), 0.5),
            REF_LOG_PROBS_KEY: old - 0.1,
        },
        batch_size=[B],
    )


def _clip_obj(r: float, a: float, lo: float, hi: float) -> float:
    return min(r * a, min(max(r, 1 - lo), 1 + hi) * a)


def _per_token(td: TensorDict, f) -> list[tuple[int, float]]:
    """[(decision index, f(ratio, advantage, new_logp))] for every token, by loops."""
    new, old = td[LOG_PROBS_KEY].detach(), td[SAMPLE_LOG_PROBS_KEY]
    out = []
    for b in range(B):
        for h in range(H):
            for a in range(A):
                r = math.exp(float(new[b, h, a] - old[b, h, a]))
                out.append((b, f(r, float(td[ADVANTAGE_KEY][b]), float(new[b, h, a]))))
    return out


def _token_mean(vals):
    return sum(v for _, v in vals) / len(vals)


def _traj_mean(vals, td):
    tokens = td[TRAJ_TOKENS_KEY].view(-1).tolist()
    by_traj = {}
    for b, v in vals:
        key = 0 if b < 2 else 1
        by_traj.setdefault(key, []).append(v)
    assert [len(by_traj[k]) for k in (0, 1)] == [tokens[0], tokens[2]]
    return sum(sum(v) / len(v) for v in by_traj.values()) / len(by_traj)


def test_grpo_matches_hand_reference():
    td = _batch()
    ref = _traj_mean(_per_token(td, lambda r, a, _: _clip_obj(r, a, 0.2, 0.28)), td)
    assert float(GRPOLoss()(td)["loss_objective"]) == pytest.approx(-ref, rel=1e-5)


def test_dapo_and_ppo_match_hand_reference():
    td = _batch(1)
    dapo = _token_mean(_per_token(td, lambda r, a, _: _clip_obj(r, a, 0.2, 0.28)))
    ppo = _token_mean(_per_token(td, lambda r, a, _: _clip_obj(r, a, 0.2, 0.2)))
    assert float(DAPOLoss()(td)["loss_objective"]) == pytest.approx(-dapo, rel=1e-5)
    assert float(PPOClipLoss()(td)["loss_objective"]) == pytest.approx(-ppo, rel=1e-5)


def test_drgrpo_matches_hand_reference():
    td = _batch(2)
    vals = _per_token(td, lambda r, a, _: _clip_obj(r, a * 0.5, 0.2, 0.28))  # A * std
    ref = sum(v for _, v in vals) / (2 * 24)  # 2 trajectories x norm_tokens
    assert float(DrGRPOLoss(norm_tokens=24)(td)["loss_objective"]) == pytest.approx(-ref, rel=1e-5)


def test_gspo_matches_hand_reference():
    td = _batch(3)
    new, old = td[LOG_PROBS_KEY].detach(), td[SAMPLE_LOG_PROBS_KEY]
    objs = []
    for b in range(B):
        s = math.exp(float((new[b] - old[b]).mean()))
        objs.append(_clip_obj(s, float(td[ADVANTAGE_KEY][b]), 3e-4, 4e-4))
    assert float(GSPOLoss()(td)["loss_objective"]) == pytest.approx(-sum(objs) / B, rel=1e-5)


def test_cispo_matches_hand_reference_and_keeps_clipped_gradients():
    td = _batch(4)
    ref = _token_mean(_per_token(td, lambda r, a, lp: min(r, 1.28) * a * lp))
    out = CISPOLoss()(td)
    assert float(out["loss_objective"]) == pytest.approx(-ref, rel=1e-5)
    out["loss_objective"].backward()
    # unlike PPO-clip, no token has a zero gradient (all advantages are non-zero)
    assert (td[LOG_PROBS_KEY].grad.abs() > 0).all()


def test_kl_term_matches_k3_reference():
    td = _batch(5)
    loss = GRPOLoss(kl_coef=0.1)
    assert loss.needs_reference and not GRPOLoss().needs_reference
    diff = -0.1 + td[SAMPLE_LOG_PROBS_KEY] - td[LOG_PROBS_KEY].detach()
    k3 = diff.exp() - diff - 1
    per_traj = [k3[:2].mean(), k3[2:].mean()]
    assert float(loss(td)["loss_kl"]) == pytest.approx(0.1 * float(sum(per_traj) / 2), rel=1e-5)


def test_ppo_matches_torchrl_clipppoloss():
    """Our token-mean PPO objective equals TorchRL's ClipPPOLoss on the same tokens.

    If upstream changes its reduction or clipping this fails and we revisit
    whether ClipPPOLoss can replace our objective.
    """
    from tensordict.nn import ProbabilisticTensorDictModule, TensorDictModule
    from torchrl.modules import ProbabilisticActor  # noqa: F401
    from torchrl.objectives import ClipPPOLoss

    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(B, H, A, 5))
    actor = ProbabilisticTensorDictModule(
        in_keys=["logits"], out_keys=["action"], distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    tokens = torch.randint(5, (B, H, A))
    old = torch.log_softmax(logits.detach() + 0.2 * torch.randn(B, H, A, 5), -1).gather(-1, tokens[..., None])[..., 0]
    adv = torch.randn(B, 1)

    class Logits(torch.nn.Module):
        def forward(self, dummy):
            return logits

    from tensordict.nn import ProbabilisticTensorDictSequential
    policy = ProbabilisticTensorDictSequential(TensorDictModule(Logits(), ["dummy"], ["logits"]), actor)
    upstream = ClipPPOLoss(actor_network=policy, critic_network=None, clip_epsilon=0.2,
                           entropy_bonus=False, normalize_advantage=False)
    upstream.set_keys(action="action", sample_log_prob="old_log_prob", advantage="advantage")
    td = TensorDict({"dummy": torch.zeros(B), "action": tokens, "old_log_prob": old,
                     "advantage": adv[:, :, None, None].expand(B, H, A, 1)}, batch_size=[B])
    theirs = upstream(td)["loss_objective"]
    new = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    ours = PPOClipLoss()(TensorDict({LOG_PROBS_KEY: new, SAMPLE_LOG_PROBS_KEY: old, ADVANTAGE_KEY: adv,
                                     TRAJ_TOKENS_KEY: torch.full((B, 1), H * A)}, batch_size=[B]))
    assert float(ours["loss_objective"]) == pytest.approx(float(theirs), rel=1e-5)


@pytest.mark.parametrize("loss_cls", LOSSES, ids=lambda c: c.__name__)
def test_positive_advantage_raises_taken_tokens_logprob(loss_cls):
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(B, H, A, 8))
    tokens = torch.randint(8, (B, H, A))

    def logp():
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]

    before = logp().detach()
    td = TensorDict({LOG_PROBS_KEY: logp(), SAMPLE_LOG_PROBS_KEY: before, ADVANTAGE_KEY: torch.ones(B, 1),
                     TRAJ_TOKENS_KEY: torch.full((B, 1), H * A), GROUP_STD_KEY: torch.ones(B, 1)},
                    batch_size=[B])
    loss_cls()(td)["loss_objective"].backward()
    torch.optim.SGD([logits], lr=0.5).step()
    assert (logp().detach() > before).all()


@pytest.mark.parametrize("loss_cls", LOSSES, ids=lambda c: c.__name__)
def test_all_equal_reward_group_gives_zero_gradient(loss_cls):
    """An all-success group: the group transform's advantage is 0, so no gradient."""
    from tests.helpers import make_trajectory
    from vla_grpo.groups import DynamicSamplingBuffer

    buf = DynamicSamplingBuffer(group_size=4, dynamic_sampling=False)
    buf.extend([make_trajectory(group_id=0, traj_id=i, length=2, success=True) for i in range(4)])
    data = buf.pop_groups(1)
    assert data is not None and (data[ADVANTAGE_KEY] == 0).all()
    logits = torch.nn.Parameter(torch.randn(data.shape[0], H, A, 8))
    tokens = data["vla_action", "tokens"]
    new = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    data.set(LOG_PROBS_KEY, new)
    loss_cls()(data)["loss_objective"].backward()
    assert logits.grad.abs().max() == 0


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: GRPOLoss(clip_high=-0.1), "clip_high"),
        (lambda: GRPOLoss(clip_low=1.5), "clip_low"),
        (lambda: DAPOLoss(kl_coef=-1), "kl_coef"),
        (lambda: PPOClipLoss(aggregation="median"), "aggregation"),
        (lambda: DrGRPOLoss(norm_tokens=0), "norm_tokens"),
    ],
)
def test_bad_loss_arguments_name_the_field(make, field):
    with pytest.raises(ValueError, match=rf"`--model\.loss\.init_args\.{field}` must be"):
        make()


# -- SFT's imitation loss ----------------------------------------------------------------
def _demo_windows(seed: int = 0, n: int = 5) -> TensorDict:
    """``n`` demo windows (chunk 3, 2-D actions) with a few padded chunk steps."""
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(n, 3, dtype=torch.bool)
    pad[1, 2:], pad[3, 1:] = True, True
    return TensorDict({
        "observation": {"image": torch.randint(0, 256, (n, 3, 16, 16), generator=g).to(torch.uint8),
                        "state": torch.randn(n, 3, generator=g)},
        "language_instruction": NonTensorStack(*[f"task {i % 2}" for i in range(n)]),
        ACTION_CHUNK_KEY: torch.rand(n, 3, 2, generator=g) * 2 - 1,
        PAD_KEY: pad,
    }, batch_size=[n])


def _token_policy():
    from vla_grpo.policies import TinyVLAPolicy

    torch.manual_seed(0)
    return TinyVLAPolicy(action_dim=2, chunk_size=3, state_dim=3, image_size=16, vocab_size=8, hidden_dim=16)


def _sft_formula_before_the_loss_class(policy, batch):
    """``SFTModule.bc_loss`` as it was written in sft.py before :class:`TokenBCLoss` (commit 7e0a5bc)."""
    batch.set(ACTION_TOKENS_KEY, policy.encode_actions(batch.get(ACTION_CHUNK_KEY)))
    log_probs, entropy = policy.score(batch)  # [B, H, A]
    weight = (~batch.get(PAD_KEY)).to(log_probs.dtype).unsqueeze(-1).expand_as(log_probs)
    count = weight.sum().clamp_min(1)
    loss = -(log_probs * weight).sum() / count
    return loss, {"entropy": (entropy.detach() * weight).sum() / count,
                  "token_likelihood": (log_probs.detach().exp() * weight).sum() / count}


def test_token_bc_loss_gives_the_sft_numbers_of_before_bit_for_bit():
    policy = _token_policy()
    out = TokenBCLoss()(policy, _demo_windows())
    out["loss_bc"].backward()
    ours = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    loss, metrics = _sft_formula_before_the_loss_class(policy, _demo_windows())
    loss.backward()
    # bit for bit: the loss class runs the old formula's operations on the same batch in the same
    # shapes and order (one computation), which is the claim of the move
    assert torch.equal(out["loss_bc"], loss)
    assert all(torch.equal(out[k], v) for k, v in metrics.items())
    assert all(torch.equal(ours[n], p.grad) for n, p in policy.named_parameters())


def test_token_bc_loss_is_the_cross_entropy_of_the_unpadded_demo_tokens():
    policy = _token_policy()
    batch = _demo_windows()
    out = TokenBCLoss()(policy, batch)
    logits = policy._action_logits(batch).reshape(5, 3, 2, 8)  # temperature 1
    tokens = policy.encode_actions(batch[ACTION_CHUNK_KEY]).long()
    keep = ~batch[PAD_KEY]
    ce = torch.nn.functional.cross_entropy(logits[keep].reshape(-1, 8), tokens[keep].reshape(-1))
    torch.testing.assert_close(out["loss_bc"], ce)
    # padded steps carry no weight: another action there changes nothing
    other = _demo_windows()
    other[ACTION_CHUNK_KEY][batch[PAD_KEY]] = 0.99
    # exact: the padded entries are masked out before the mean, so the same unpadded values go
    # through the same operations in the same shapes
    assert torch.equal(TokenBCLoss()(policy, other)["loss_bc"], out["loss_bc"])
    # a wholly padded batch is 0, not NaN
    other[PAD_KEY][:] = True
    assert float(TokenBCLoss()(policy, other)["loss_bc"]) == 0.0


def test_a_bc_step_raises_the_demo_tokens_likelihood():
    policy = _token_policy()
    before = float(TokenBCLoss()(policy, _demo_windows())["token_likelihood"])
    TokenBCLoss()(policy, _demo_windows())["loss_bc"].backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.1 * p.grad
    assert float(TokenBCLoss()(policy, _demo_windows())["token_likelihood"]) > before
