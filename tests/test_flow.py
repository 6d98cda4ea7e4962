"""The flow-matching policy: exact chain log-probs, ratio 1, the ODE at sigma 0, every loss on a flow batch.

Real tiny components: the flow reading VLA (MiniLM encoder, FiLM trunk) with each
velocity network, on the toy suite's observations. The contract tests shared with
the token policies are in tests/test_policies.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from tests.test_policies import DIMS, TEMPERATURE, TINY_SIZES, observations
from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.groups import split_trajectories
from vla_grpo.keys import (
    ACTION_CHUNK_KEY,
    ADVANTAGE_KEY,
    ENTROPY_KEY,
    GROUP_STD_KEY,
    INSTRUCTION_KEY,
    LOG_PROBS_KEY,
    PAD_KEY,
    REF_LOG_PROBS_KEY,
    SAMPLE_LOG_PROBS_KEY,
    TRAJ_TOKENS_KEY,
)
from vla_grpo.losses import IMITATION_LOSSES, LOSSES, FlowMatchingLoss, GRPOLoss
from vla_grpo.policies import FlowVLAPolicy, ReadingVLAPolicy
from vla_grpo.policies.flow import CHAIN_KEY
from vla_grpo.prompts import Prompt
from vla_grpo.rollout import GroupedRollout

ROOT = Path(__file__).resolve().parents[1]
H, A = DIMS["chunk_size"], DIMS["action_dim"]
#: float32 step means recomputed in another batch layout (S=K points at once vs one at a time)
RATIO_ATOL = 1e-5
VELOCITIES = ["mlp", "expert"]


def make_flow(velocity: str = "mlp", seed: int = 0, **overrides) -> FlowVLAPolicy:
    torch.manual_seed(seed)
    return FlowVLAPolicy(**{**DIMS, **TINY_SIZES[FlowVLAPolicy], "velocity": velocity, "temperature": TEMPERATURE,
                            **overrides})


def reference_step(x, v, t, K: int, sigma: float):
    """Flow-SDE's step written out again (Flow-GRPO / pi_RL), independently of the policy's code."""
    dt, t_next = 1.0 / K, t - 1.0 / K
    sigma_t = sigma * math.sqrt(t / (1 - t if t < 1 else dt))
    mean = (x - t * v) * (1 - t_next) + (x + (1 - t) * v) * (t_next - sigma_t ** 2 * dt / (2 * t))
    return mean, sigma_t * math.sqrt(dt)


@pytest.mark.parametrize("velocity", VELOCITIES)
def test_chain_log_prob_equals_an_independent_gaussian_density(velocity):
    policy = make_flow(velocity)
    obs = observations()
    out = policy.act(obs.clone())
    chain, K = out[CHAIN_KEY], policy.num_steps
    assert chain.shape == (6, K + 1, H, A)
    sigma = policy.sigma * math.sqrt(TEMPERATURE)
    with torch.no_grad():
        context = policy.flow_context(obs)
        want = []
        for k in range(K):
            t = 1 - k / K
            v = policy.flow_velocity(chain[:, k : k + 1], torch.full((6, 1), t), context)[:, 0]
            mean, std = reference_step(chain[:, k], v, t, K, sigma)
            want.append(torch.distributions.Normal(mean, std).log_prob(chain[:, k + 1]))
    want = torch.stack(want, 1)  # [B, K, H, A]
    torch.testing.assert_close(out[SAMPLE_LOG_PROBS_KEY], want.flatten(2), atol=1e-4, rtol=1e-5)
    # the executed chunk is the chain's end, de-normalised (bounds [-1, 1] here) and clipped
    torch.testing.assert_close(out[ACTION_CHUNK_KEY], chain[:, -1].clamp(-1, 1))


def test_the_step_unit_sums_each_steps_coordinates():
    torch.manual_seed(3)
    coordinate = make_flow()
    step = make_flow(log_prob_unit="step")
    step.load_state_dict(coordinate.state_dict())
    out = coordinate.act(observations())
    assert step.tokens_per_decision == step.num_steps and coordinate.tokens_per_decision == step.num_steps * H * A
    torch.testing.assert_close(step.score(out)[0], out[SAMPLE_LOG_PROBS_KEY].sum(-1, keepdim=True), atol=1e-4,
                               rtol=1e-6)


@pytest.mark.parametrize("velocity", VELOCITIES)
def test_the_ratio_is_one_at_unchanged_weights(velocity):
    policy = make_flow(velocity)
    out = policy.act(observations())
    log_probs, _ = policy.score(out)
    ratio = (log_probs - out[SAMPLE_LOG_PROBS_KEY]).exp()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=RATIO_ATOL, rtol=0)
    batch = out.select(CHAIN_KEY, SAMPLE_LOG_PROBS_KEY).set(LOG_PROBS_KEY, log_probs)
    batch.set(ADVANTAGE_KEY, torch.randn(6, 1)).set(TRAJ_TOKENS_KEY, torch.full((6, 1), policy.tokens_per_decision))
    metrics = GRPOLoss()(batch)
    assert float(metrics["clip_fraction"]) == 0 and abs(float(metrics["approx_kl"])) < 1e-6


@pytest.mark.parametrize("velocity", VELOCITIES)
def test_gradients_reach_the_velocity_network_and_a_positive_advantage_raises_the_chain(velocity):
    policy = make_flow(velocity)
    out = policy.act(observations())
    log_probs, _ = policy.score(out)
    (-log_probs.sum()).backward()  # the loss -A log p of every step, A > 0
    for name, p in policy.velocity_net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all(), name
    before = log_probs.detach().sum()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    with torch.no_grad():  # a short step down that loss
        for p in policy.parameters():
            if p.grad is not None:
                p.sub_(1e-3 * p.grad / norm)
    assert policy.score(out)[0].sum() > before


def test_temperature_scales_each_steps_noise_variance():
    policy = make_flow()
    policy.temperature = 1.0
    x, v = torch.randn(3, H, A), torch.randn(3, H, A)
    _, std_1 = policy.step_gaussian(x, v, torch.tensor(0.5), policy.rollout_sigma)
    policy.temperature = 4.0
    _, std_4 = policy.step_gaussian(x, v, torch.tensor(0.5), policy.rollout_sigma)
    torch.testing.assert_close(std_4, 2 * std_1)
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        policy.temperature = 0.0


@pytest.mark.parametrize("velocity", VELOCITIES)
def test_sigma_zero_gives_the_odes_actions(velocity):
    policy = make_flow(velocity)
    obs = observations()
    K = policy.num_steps
    noise = torch.randn(6, H, A)
    with torch.no_grad():
        context = policy.flow_context(obs)
        chain, log_probs = policy.sample_chain(context, noise, sigma=0.0)
        x = noise
        for k in range(K):  # Euler on the velocity alone
            x = x - policy.flow_velocity(x.unsqueeze(1), torch.full((6, 1), 1 - k / K), context)[:, 0] / K
        torch.testing.assert_close(chain[:, -1], x, atol=1e-6, rtol=0)
        assert not log_probs.any()
        # greedy decoding is that ODE from the noise's mean, whatever sigma is
        x = torch.zeros(6, H, A)
        for k in range(K):
            x = x - policy.flow_velocity(x.unsqueeze(1), torch.full((6, 1), 1 - k / K), context)[:, 0] / K
    greedy = policy.act(obs.clone(), greedy=True)
    torch.testing.assert_close(greedy[ACTION_CHUNK_KEY], x.clamp(-1, 1), atol=1e-6, rtol=0)
    policy.sigma = 0.0
    with pytest.raises(ValueError, match="sigma"):
        policy.score(greedy)


@pytest.mark.parametrize("loss_cls", LOSSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("unit", ["coordinate", "step"])
def test_every_policy_loss_runs_on_a_flow_batch(loss_cls, unit):
    policy = make_flow(log_prob_unit=unit)
    out = policy.act(observations())
    loss = loss_cls(kl_coef=0.1)  # the KL term runs on the flow log-probs too
    log_probs, entropy = policy.score(out)
    batch = out.select(CHAIN_KEY, SAMPLE_LOG_PROBS_KEY)
    batch.update({LOG_PROBS_KEY: log_probs, ENTROPY_KEY: entropy, ADVANTAGE_KEY: torch.randn(6, 1),
                  GROUP_STD_KEY: torch.full((6, 1), 0.5), REF_LOG_PROBS_KEY: log_probs.detach() - 0.01,
                  TRAJ_TOKENS_KEY: torch.tensor([2, 2, 4, 4, 4, 4]).view(6, 1) * policy.tokens_per_decision})
    terms = loss(batch)
    total = sum(v for k, v in terms.items() if k.startswith("loss_"))
    assert total.shape == () and torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.velocity_net.parameters())


def _demo_batch(n: int = 6) -> TensorDict:
    batch = observations(n)
    batch.set(ACTION_CHUNK_KEY, torch.rand(n, H, A) * 2 - 1)
    batch.set(PAD_KEY, torch.arange(H).expand(n, H) >= torch.arange(n, 0, -1).view(n, 1).clamp_max(H))
    return batch


def test_flow_matching_is_the_velocity_error_of_unpadded_steps_and_fits_the_demos():
    assert FlowMatchingLoss in IMITATION_LOSSES
    policy = make_flow()
    loss = policy.imitation_loss()
    assert isinstance(loss, FlowMatchingLoss)
    batch = _demo_batch()
    torch.manual_seed(1)
    first = loss(policy, batch)
    # by hand: the same draws (pi0's Beta(1.5, 1) times, then the noise), x_t = t eps + (1 - t) a, target eps - a
    torch.manual_seed(1)
    t = 0.001 + 0.999 * torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0)).sample((6, 1))
    noise = torch.randn(6, 1, H, A)
    a = batch[ACTION_CHUNK_KEY].unsqueeze(1)  # the bounds are [-1, 1]: coordinates are the actions
    with torch.no_grad():
        v = policy.predict_velocity(batch, t[..., None, None] * noise + (1 - t[..., None, None]) * a, t)
    keep = ~batch[PAD_KEY]
    want = ((v - (noise - a)) ** 2)[:, 0][keep].mean()
    torch.testing.assert_close(first["loss_flow"].detach(), want, atol=1e-6, rtol=1e-5)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        loss(policy, batch)["loss_flow"].backward()
        opt.step()
    torch.manual_seed(1)
    assert loss(policy, batch)["loss_flow"] < 0.5 * first["loss_flow"]


def test_flow_matching_rejects_bad_arguments_in_one_line():
    with pytest.raises(ValueError, match="`--model.loss.init_args.time_sampling`"):
        FlowMatchingLoss(time_sampling="normal")
    with pytest.raises(ValueError, match="`--model.loss.init_args.noise_samples`"):
        FlowMatchingLoss(noise_samples=0)


def test_the_rollout_stores_the_chain_and_its_rows_score_to_the_sampled_log_probs():
    """Rollout -> trajectories -> score: the path GRPO takes keeps the chain, and the ratio is still 1."""
    suite = ToyReachSuite(image_size=16)
    policy = make_flow()
    rollout = GroupedRollout(suite, num_envs=4, chunk_size=H)
    try:
        data = rollout.run(policy, [Prompt(i % 2, 20 + i) for i in range(4)], [0, 0, 1, 1])
    finally:
        rollout.close()
    trajs = split_trajectories(data, [10, 11, 12, 13], tokens_per_decision=policy.tokens_per_decision,
                               action_keys=policy.action_train_keys)
    rows = torch.cat(trajs, 0)
    assert rows[CHAIN_KEY].shape[1:] == (policy.num_steps + 1, H, A) and "tokens" not in rows["vla_action"].keys()
    lengths = [t.shape[0] for t in trajs]
    assert rows[TRAJ_TOKENS_KEY].view(-1).tolist() == [n * policy.tokens_per_decision for n in lengths for _ in range(n)]
    asked = [suite.all_tasks()[i % 2].instruction for i, n in enumerate(lengths) for _ in range(n)]
    rows.set(INSTRUCTION_KEY, NonTensorStack(*asked))
    torch.testing.assert_close(policy.score(rows)[0], rows[SAMPLE_LOG_PROBS_KEY], atol=RATIO_ATOL, rtol=0)


def test_the_trunk_starts_from_the_token_base(tmp_path):
    base = ROOT / "checkpoints" / "tabletop_base"
    torch.manual_seed(0)
    policy = FlowVLAPolicy(action_dim=7, chunk_size=8, state_dim=8, image_size=64, trunk_from=str(base))
    token = ReadingVLAPolicy(pretrained_path=str(base), action_dim=7, chunk_size=8, state_dim=8, image_size=64)
    theirs = token.state_dict()
    trunk = [k for k in policy.state_dict() if k.split(".")[0] in ("text_proj", "blocks", "state_proj", "trunk")]
    assert trunk and all(torch.equal(policy.state_dict()[k], theirs[k]) for k in trunk)
    assert not policy.pretrained  # SFT sets the demos' action statistics
    with pytest.raises(ValueError) as err:
        FlowVLAPolicy(action_dim=7, chunk_size=8, state_dim=8, image_size=64, hidden_dim=64, trunk_from=str(base))
    assert "\n" not in str(err.value) and "`policy.trunk_from`" in str(err.value) and "hidden_dim" in str(err.value)
    with pytest.raises(FileNotFoundError, match="`policy.trunk_from`"):
        FlowVLAPolicy(action_dim=7, chunk_size=8, state_dim=8, image_size=64, trunk_from=str(tmp_path / "none"))


def test_the_directory_fixes_the_velocity_network_not_the_sampler(tmp_path):
    policy = make_flow("expert", num_steps=3, sigma=0.3)
    path = policy.save_pretrained(tmp_path / "flow")
    loaded = FlowVLAPolicy(pretrained_path=str(path), **DIMS, num_steps=5, sigma=0.7)
    assert loaded.velocity == "expert" and loaded.velocity_width == policy.velocity_width
    assert loaded.num_steps == 5 and loaded.sigma == 0.7 and loaded.pretrained
    with pytest.raises(ValueError, match="`policy.velocity` must be one of"):
        make_flow("unet")
    with pytest.raises(ValueError, match="`policy.num_steps` must be >= 1"):
        make_flow(num_steps=0)
