"""The policy contract, for every registered policy, plus the transformers VLA's own promises.

Every class in ``vla_grpo.policies.POLICIES`` (token and flow heads; the flow VLA
with each velocity network) is built at tiny sizes for the toy suite and must:
write a chunk and log-probs with ``tokens_per_decision`` entries per decision
(token heads: tokens too); score its own samples to the same log-probs at the
rollout temperature (the GRPO ratio is 1 before the first update); decode
greedily and deterministically; survive save -> load and deepcopy unchanged;
pass gradients to every weight; name an imitation loss that trains it; and
refuse a wrong directory with one line.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data.vla import VocabTailActionTokenizer

from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.keys import ACTION_CHUNK_KEY, ACTION_TOKENS_KEY, PAD_KEY, SAMPLE_LOG_PROBS_KEY
from vla_grpo.losses import ImitationLoss
from vla_grpo.policies import (
    POLICIES,
    TOKEN_POLICIES,
    FlowVLAPolicy,
    HFVLAPolicy,
    ReadingVLAPolicy,
    TinyVLAPolicy,
)
from vla_grpo.policies.pretrained import POLICY_JSON

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURE = 1.6  # SimpleVLA-RL's rollout temperature
SUITE = ToyReachSuite(image_size=16)
DIMS = dict(action_dim=SUITE.action_dim, chunk_size=4, state_dim=SUITE.state_dim, image_size=SUITE.image_size)
#: smaller-than-default sizes where a policy has them (a new policy runs at its defaults)
TINY_SIZES = {
    ReadingVLAPolicy: dict(hidden_dim=32, channels=(8, 8, 8, 8), text_dim=16),
    TinyVLAPolicy: dict(hidden_dim=32),
    HFVLAPolicy: dict(patch_size=4, vision_hidden=32, text_hidden=32, layers=1, heads=2),
    FlowVLAPolicy: dict(hidden_dim=32, channels=(8, 8, 8, 8), text_dim=16, velocity_width=32),
}
#: a file of each policy's directory whose absence must be reported by name
WEIGHT_FILE = {ReadingVLAPolicy: "model.safetensors", TinyVLAPolicy: "model.safetensors",
               HFVLAPolicy: "heads.safetensors", FlowVLAPolicy: "model.safetensors"}


class Variant:
    """A registered policy class built with some extra arguments (the flow VLA with its π0-style expert)."""

    def __init__(self, cls, name: str | None = None, **args) -> None:
        self.cls, self.name, self.args = cls, name or cls.__name__, args

    def __call__(self, **kwargs):
        return self.cls(**{**self.args, **kwargs})


#: every registered policy, and the flow VLA's second velocity network
VARIANTS = [Variant(cls) for cls in POLICIES] + [Variant(FlowVLAPolicy, "FlowVLAPolicy-expert", velocity="expert")]


def make_policy(cls, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    sizes = TINY_SIZES.get(getattr(cls, "cls", cls), {})
    return cls(**{**DIMS, **sizes, "temperature": TEMPERATURE, **overrides})


def is_token(policy) -> bool:
    return isinstance(policy, TOKEN_POLICIES)


def observations(n: int = 6) -> TensorDict:
    """Reset observations of the toy suite: red and green tasks mixed (instructions of two lengths)."""
    env = SUITE.make_env(n, chunk_size=DIMS["chunk_size"])
    num_tasks = len(SUITE.all_tasks())
    reset = TensorDict(
        {
            "task_index": (torch.arange(n) % num_tasks).view(n, 1),
            "init_state_id": torch.arange(n).view(n, 1),
            "group_id": torch.zeros(n, 1, dtype=torch.int64),
        },
        batch_size=[n],
    )
    return env.reset(reset)


@pytest.fixture(params=VARIANTS, ids=lambda v: v.name)
def policy_cls(request):
    return request.param


def test_act_writes_log_probs_and_chunk(policy_cls):
    policy = make_policy(policy_cls)
    out = policy.act(observations())
    H, A = DIMS["chunk_size"], DIMS["action_dim"]
    log_probs, chunk = out[SAMPLE_LOG_PROBS_KEY], out[ACTION_CHUNK_KEY]
    assert chunk.shape == (6, H, A) and chunk.dtype == torch.float32
    assert log_probs.ndim == 3 and log_probs.shape[0] == 6 and log_probs[0].numel() == policy.tokens_per_decision
    assert torch.isfinite(log_probs).all()
    assert set(policy.action_train_keys) < set(policy.action_record_keys) <= set(out["vla_action"].keys())
    if is_token(policy):
        tokens = out[ACTION_TOKENS_KEY]
        assert tokens.shape == log_probs.shape == (6, H, A) and policy.tokens_per_decision == H * A
        assert tokens.dtype == torch.long and 0 <= tokens.min() and tokens.max() < policy.vocab_size
        assert (log_probs <= 0).all()


def test_sampled_log_probs_equal_scored_log_probs(policy_cls):
    policy = make_policy(policy_cls)
    out = policy.act(observations())
    log_probs, entropy = policy.score(out)
    torch.testing.assert_close(log_probs, out[SAMPLE_LOG_PROBS_KEY], atol=1e-5, rtol=0)
    assert entropy.shape == log_probs.shape and torch.isfinite(entropy).all()
    if is_token(policy):
        assert (entropy > 0).all()  # a Gaussian step's differential entropy may be negative
    # a minibatch (other batch-mates, other instruction padding) scores the same
    torch.testing.assert_close(policy.score(out[1:4])[0], out[SAMPLE_LOG_PROBS_KEY][1:4], atol=1e-5, rtol=0)
    # the temperature is applied when scoring too: at T=1 the scores differ
    policy.temperature = 1.0
    assert not torch.allclose(policy.score(out)[0], out[SAMPLE_LOG_PROBS_KEY], atol=1e-3)


def test_greedy_decoding_is_deterministic(policy_cls):
    policy = make_policy(policy_cls)
    obs = observations()
    first, second = policy.act(obs.clone(), greedy=True), policy.act(obs.clone(), greedy=True)
    key = ACTION_TOKENS_KEY if is_token(policy) else ACTION_CHUNK_KEY
    assert torch.equal(first[key], second[key])
    assert torch.equal(first[ACTION_CHUNK_KEY], second[ACTION_CHUNK_KEY])
    sampled = torch.stack([policy.act(obs.clone())[key] for _ in range(3)])
    assert not (sampled == first[key]).all()


def _same_outputs(a, b, obs: TensorDict) -> None:
    greedy_a, greedy_b = a.act(obs.clone(), greedy=True), b.act(obs.clone(), greedy=True)
    if is_token(a):
        assert torch.equal(greedy_a[ACTION_TOKENS_KEY], greedy_b[ACTION_TOKENS_KEY])
    assert torch.equal(greedy_a[ACTION_CHUNK_KEY], greedy_b[ACTION_CHUNK_KEY])
    sampled = a.act(obs.clone())
    torch.testing.assert_close(b.score(sampled)[0], sampled[SAMPLE_LOG_PROBS_KEY], atol=1e-5, rtol=0)


def test_save_load_gives_identical_outputs(policy_cls, tmp_path):
    policy = make_policy(policy_cls)
    policy.set_action_stats(torch.tensor([-0.5, -2.0]), torch.tensor([0.5, 3.0]))
    policy.save_pretrained(tmp_path / "policy")
    loaded = policy_cls(pretrained_path=str(tmp_path / "policy"), **DIMS, temperature=TEMPERATURE)
    torch.testing.assert_close(loaded.action_low, policy.action_low)
    torch.testing.assert_close(loaded.action_high, policy.action_high)
    _same_outputs(policy, loaded, observations())


def test_deepcopy_and_state_dict_round_trip(policy_cls):
    # the trainer deep-copies the policy for a frozen reference and loads Lightning state dicts
    policy = make_policy(policy_cls)
    policy.set_action_stats(torch.tensor([-0.5, -2.0]), torch.tensor([0.5, 3.0]))
    obs = observations()
    _same_outputs(policy, copy.deepcopy(policy), obs)
    fresh = make_policy(policy_cls, seed=1)  # other weights and stats: the comparison can fail before the load
    with pytest.raises(AssertionError):
        _same_outputs(policy, fresh, obs)
    fresh.load_state_dict(policy.state_dict())
    want = policy.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in fresh.state_dict().items())
    _same_outputs(policy, fresh, obs)


def test_gradients_reach_every_weight(policy_cls):
    policy = make_policy(policy_cls)
    out = policy.act(observations())
    log_probs, entropy = policy.score(out)
    (-(log_probs.mean() + 0.1 * entropy.mean())).backward()
    # every weight must get a gradient: an unused one breaks DDP
    without = [n for n, p in policy.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without, without
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters())


def test_the_policy_names_the_imitation_loss_sft_fits_it_with(policy_cls):
    """SFT never branches on the policy type: it fits ``policy.imitation_loss()`` to demo windows."""
    policy = make_policy(policy_cls)
    batch = observations()
    H, A = DIMS["chunk_size"], DIMS["action_dim"]
    batch.set(ACTION_CHUNK_KEY, torch.rand(6, H, A) * 2 - 1)
    batch.set(PAD_KEY, torch.arange(H).expand(6, H) >= torch.arange(6, 0, -1).view(6, 1))  # some steps padded
    loss = policy.imitation_loss()
    assert isinstance(loss, ImitationLoss)
    out = loss(policy, batch)
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    assert total.shape == () and torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_decoding_applies_the_action_stats(policy_cls):
    policy = make_policy(policy_cls)
    low, high = torch.tensor([-0.5, -2.0]), torch.tensor([0.5, 3.0])
    policy.set_action_stats(low, high)
    actions = low + torch.rand(64, DIMS["action_dim"]) * (high - low)
    chunk = policy.act(observations())[ACTION_CHUNK_KEY]
    assert (chunk >= low - 1e-5).all() and (chunk <= high + 1e-5).all()
    if not is_token(policy):  # a flow head's coordinates: the bounds map to -1 and 1
        coords = policy.normalize_actions(actions)
        assert coords.min() >= -1 - 1e-5 and coords.max() <= 1 + 1e-5
        torch.testing.assert_close(policy.denormalize_actions(coords), actions)
        return
    decoded = policy.decode_tokens(policy.encode_actions(actions))
    bin_width = (high - low) / policy.vocab_size * 2  # OpenVLA has 255 bin centres over [-1, 1]
    assert ((decoded - actions).abs() <= bin_width).all()
    every = policy.decode_tokens(torch.arange(policy.vocab_size).unsqueeze(-1).expand(-1, DIMS["action_dim"]))
    assert (every >= low - 1e-5).all() and (every <= high + 1e-5).all()


@pytest.mark.parametrize("breakage", ["no_directory", "missing_json", "missing_weights", "other_class", "bad_json"])
def test_a_bad_directory_is_a_one_line_error(policy_cls, breakage, tmp_path):
    path = make_policy(policy_cls).save_pretrained(tmp_path / "policy")
    expected = {"no_directory": FileNotFoundError, "missing_json": FileNotFoundError,
                "missing_weights": FileNotFoundError, "other_class": ValueError, "bad_json": ValueError}[breakage]
    needle = {"missing_json": POLICY_JSON, "missing_weights": WEIGHT_FILE.get(policy_cls.cls, ""),
              "other_class": policy_cls.cls.__name__}.get(breakage, "")
    if breakage == "no_directory":
        shutil.rmtree(path)
    elif breakage.startswith("missing"):
        (path / needle).unlink()
    elif breakage == "other_class":
        other = next(c for c in (TinyVLAPolicy, HFVLAPolicy) if c is not policy_cls.cls)
        shutil.rmtree(path)
        make_policy(other).save_pretrained(path)
    else:
        (path / POLICY_JSON).write_text("{not json")
    with pytest.raises(expected) as err:
        policy_cls(pretrained_path=str(path), **DIMS)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and needle in message


def test_a_wrong_action_dim_is_a_one_line_error(policy_cls, tmp_path):
    path = make_policy(policy_cls).save_pretrained(tmp_path / "policy")
    with pytest.raises(ValueError) as err:
        policy_cls(pretrained_path=str(path), **{**DIMS, "action_dim": 7})
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "action_dim=2" in message and "`policy.action_dim` is 7" in message


# -- the transformers VLA ----------------------------------------------------------------
def test_hf_decodes_the_whole_chunk_in_one_forward():
    policy = make_policy(HFVLAPolicy)
    calls = []
    policy.lm.get_decoder().register_forward_hook(lambda *args: calls.append(1))
    policy.act(observations())
    assert len(calls) == 1  # OpenVLA-OFT parallel decoding: H*A tokens, one pass


@pytest.mark.parametrize("num_bins", [256, 32])
def test_hf_action_tokens_are_the_lm_vocab_tail(num_bins, tmp_path):
    policy = make_policy(HFVLAPolicy, num_bins=num_bins)
    low, high = torch.tensor([-0.5, -2.0]), torch.tensor([0.5, 3.0])
    policy.set_action_stats(low, high)
    vocab = policy.lm.config.vocab_size
    assert policy.vocab_size == num_bins
    assert torch.equal(policy.action_token_ids, torch.arange(vocab - num_bins, vocab))
    assert vocab - num_bins >= len(policy.tokenizer)  # action ids never collide with instruction ids
    openvla = VocabTailActionTokenizer(num_bins, full_vocab_size=vocab, norm_low=low, norm_high=high)
    actions = low + torch.rand(32, 2) * (high - low)
    assert torch.equal(policy.action_token_ids[policy.encode_actions(actions)], openvla.encode(actions))
    # the bin count travels with the directory
    loaded = HFVLAPolicy(pretrained_path=str(policy.save_pretrained(tmp_path / "p")), **DIMS)
    assert loaded.vocab_size == num_bins
    assert policy.act(observations())[ACTION_TOKENS_KEY].max() < num_bins


def test_hf_bf16_and_gradient_checkpointing_switches():
    reference = make_policy(HFVLAPolicy)
    switched = make_policy(HFVLAPolicy, bf16=True, gradient_checkpointing=True)
    assert switched.lm.is_activation_checkpointing and switched.vision.is_activation_checkpointing
    out = reference.act(observations())
    # on CPU bf16 is off: same fp32 weights and logits, checkpointing changes no number
    assert all(p.dtype == torch.float32 for p in switched.parameters())
    torch.testing.assert_close(switched.score(out)[0], out[SAMPLE_LOG_PROBS_KEY], atol=1e-5, rtol=0)
    for policy in (reference, switched):
        policy.score(out)[0].sum().backward()
    for (name, p), q in zip(reference.named_parameters(), switched.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_hf_loads_at_another_image_size_by_resizing(tmp_path):
    path = make_policy(HFVLAPolicy).save_pretrained(tmp_path / "policy")
    bigger = HFVLAPolicy(pretrained_path=str(path), **{**DIMS, "image_size": 32})
    obs = observations()
    obs["observation", "image"] = obs["observation", "image"].repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert bigger.act(obs)[ACTION_CHUNK_KEY].shape == (6, DIMS["chunk_size"], DIMS["action_dim"])


def test_hf_rejects_bad_sizes_in_one_line():
    with pytest.raises(ValueError, match="`policy.patch_size` must divide `policy.image_size` 16"):
        make_policy(HFVLAPolicy, patch_size=5)
    with pytest.raises(ValueError, match="`policy.text_model`"):
        make_policy(HFVLAPolicy, text_model="gpt9")


# -- swapping policies from the command line -------------------------------------------
@pytest.mark.parametrize("policy,args", [
    ("vla_grpo.policies.hf.HFVLAPolicy", ["patch_size=4", "text_hidden=32", "heads=2"]),
    ("vla_grpo.policies.FlowVLAPolicy", ["velocity_width=32"]),  # a token config's vocab_size is dropped
], ids=["HFVLAPolicy", "FlowVLAPolicy"])
def test_policy_swaps_from_the_cli(tmp_path, policy, args):
    from vla_grpo.cli import main
    from vla_grpo.tb import read_scalars

    main(["fit", "-c", str(ROOT / "conf/toy.yaml"), f"--trainer.default_root_dir={tmp_path}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=2",
          "--model.groups_per_step=2", "--model.prompts_per_round=2", "--trainer.enable_progress_bar=false",
          "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
          f"--model.policy={policy}", *[f"--model.policy.init_args.{a}" for a in args]])
    scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["rollout/success_rate"]] == [0, 1]
    assert "train/loss_objective" in scalars
    hparams = (next(tmp_path.rglob("config.yaml"))).read_text()
    assert policy in hparams


@pytest.mark.parametrize("breakage", ["no_directory", "wrong_action_dim"])
def test_a_bad_pretrained_path_on_the_cli_is_one_line(breakage, tmp_path, capsys):
    from vla_grpo.cli import main

    path = tmp_path / "policy"
    if breakage == "wrong_action_dim":
        HFVLAPolicy(**{**DIMS, "action_dim": 7}, patch_size=4).save_pretrained(path)
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(ROOT / "conf/toy_hf.yaml"), f"--trainer.default_root_dir={tmp_path}",
              "--trainer.logger=false", f"--model.policy.init_args.pretrained_path={path}"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if str(path) in ln]
    assert len(lines) == 1, lines
    assert ("action_dim=7" in lines[0]) if breakage == "wrong_action_dim" else ("no directory" in lines[0])
