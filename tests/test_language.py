"""The policy reads: the offline text encoder, phrasings and the paraphrase split, the pretraining catalogue,
and the guard that held-out phrasings and unseen tasks never reach training (token and flow heads)."""
from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from vla_grpo.envs.base import TRAIN_SPLIT
from vla_grpo.envs.tabletop import TabletopSuite
from vla_grpo.envs.tabletop.catalogue import PRETRAIN_SPLIT
from vla_grpo.policies import FlowVLAPolicy, ReadingVLAPolicy
from vla_grpo.policies.text import TextEncoder

UNSEEN = ("unseen_spatial", "unseen_object", "unseen_goal")


@pytest.fixture(scope="module")
def suite() -> TabletopSuite:
    return TabletopSuite(image_size=16, pretrain_catalogue=True)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


# -- the encoder -----------------------------------------------------------------------
def test_the_encoder_loads_offline_from_the_package(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    enc = TextEncoder()
    pooled, tokens = enc(["pick up the mug"], torch.device("cpu"))
    assert enc.dim == 384 and pooled.shape == (1, 384) and tokens.shape == (1, enc.max_tokens, 384)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())


def test_a_cache_hit_returns_the_same_features(encoder):
    first = encoder(["push the plate to the front", "pick up the mug"], torch.device("cpu"))
    assert "push the plate to the front" in encoder._cache
    again = encoder(["pick up the mug", "push the plate to the front"], torch.device("cpu"))
    assert torch.equal(first[0][0], again[0][1]) and torch.equal(first[1][1], again[1][0])
    # and equal to a fresh, uncached encoding of the same strings
    fresh = TextEncoder()._encode(["pick up the mug"], torch.device("cpu"))
    torch.testing.assert_close(fresh[0][0], again[0][0], atol=1e-5, rtol=0)


def test_phrasings_of_one_task_are_closer_than_different_tasks(suite, encoder):
    """Per seen task: its rewordings (training and held-out) are on average closer to its instruction
    than the other seen tasks' instructions are; and 33 of its 36 held-out phrasings have a phrasing of
    their own task as the nearest seen-task training phrasing (the 3 others are near-ties between
    spatial relations, or a loose rewording: measured, and what the paraphrase split tests)."""
    seen = suite.tasks(TRAIN_SPLIT)
    cpu = torch.device("cpu")
    instructions, _ = encoder([t.instruction for t in seen], cpu)
    train = [(i, p) for i, t in enumerate(seen) for p in t.phrasings]
    train_emb, _ = encoder([p for _, p in train], cpu)
    nearest_own = 0
    for i, task in enumerate(seen):
        own, _ = encoder([*task.phrasings[1:], *task.held_out_phrasings], cpu)
        others = torch.cat([instructions[:i], instructions[i + 1:]])
        assert float((own @ instructions[i]).mean()) > float((others @ instructions[i]).mean()) + 0.2, task.name
        held, _ = encoder(list(task.held_out_phrasings), cpu)
        nearest_own += sum(train[int(j)][0] == i for j in (held @ train_emb.T).argmax(-1))
    assert nearest_own >= 33


# -- phrasings, the paraphrase split and the catalogue ---------------------------------------
def test_every_task_has_training_phrasings_and_held_out_ones(suite):
    for task in suite.all_tasks():
        if task.split in (TRAIN_SPLIT, PRETRAIN_SPLIT, *UNSEEN):
            assert len(task.phrasings) >= 3 and task.phrasings[0] == task.instruction
            assert len(task.held_out_phrasings) >= 2
            assert len(set(task.phrasings) | set(task.held_out_phrasings)) == 5


def test_held_out_phrasings_are_disjoint_from_every_training_phrasing(suite):
    """No string a policy can be trained on (seen and catalogue phrasings) is held out or an unseen task's."""
    tasks = suite.all_tasks()
    trainable = {p for t in tasks if t.split in (TRAIN_SPLIT, PRETRAIN_SPLIT) for p in t.phrasings}
    held_out = {p for t in tasks for p in t.held_out_phrasings}
    held_out |= {p for t in tasks if t.split == "paraphrase" for p in t.phrasings}
    unseen = {p for t in tasks if t.split in UNSEEN for p in (*t.phrasings, *t.held_out_phrasings)}
    assert held_out and not trainable & held_out
    assert not trainable & unseen


def test_the_paraphrase_split_asks_the_seen_tasks_from_their_own_states(suite):
    seen, para = suite.tasks(TRAIN_SPLIT), suite.tasks("paraphrase")
    assert [p.name for p in para] == [f"paraphrase/{t.name}" for t in seen]
    for s, p in zip(seen, para, strict=True):
        assert p.phrasings == s.held_out_phrasings and p.instruction not in s.phrasings
        a, b = suite.task(suite.task_index(s.name)), suite.task(suite.task_index(p.name))
        assert a.init_layout(3) == b.init_layout(3) and a.goal == b.goal
    env = suite.make_env(2, chunk_size=8)
    td = env.reset(TensorDict({"task_index": torch.tensor([[0], [suite.task_index(para[0].name)]]),
                               "init_state_id": torch.tensor([[4], [4]]), "group_id": torch.zeros(2, 1).long()},
                              batch_size=[2]))
    env.close()
    assert torch.equal(td["observation", "image"][0], td["observation", "image"][1])


def test_the_catalogue_is_new_compositions_of_the_unseen_tasks_parts(suite):
    tasks = suite.all_tasks()
    catalogue = suite.tasks(PRETRAIN_SPLIT)
    assert len(catalogue) >= 90
    others = {p for t in tasks if t.split != PRETRAIN_SPLIT for p in (*t.phrasings, *t.held_out_phrasings)}
    asked = {p for t in catalogue for p in (*t.phrasings, *t.held_out_phrasings)}
    assert not asked & others  # no catalogue task is a seen, unseen or paraphrase task, in any wording
    words = {w for p in asked for w in re.findall(r"[a-z]+", p)}
    for t in (t for t in tasks if t.split in UNSEEN):
        missing = set(re.findall(r"[a-z]+", t.instruction)) - words
        assert not missing, (t.name, missing)
    kinds = {o.kind.name for i, t in enumerate(tasks) if t.split == PRETRAIN_SPLIT for o in suite.task(i).objects}
    for t in suite.tasks("unseen_object"):
        assert suite.task(suite.task_index(t.name)).kind("target").name in kinds
    relations = ("between the cookie box and the mug", "behind the mug", "on the right side of the table")
    assert all(any(r in p for p in asked) for r in relations)


# -- held-out data never reaches training ---------------------------------------------------------
class _Recorder(L.Callback):
    """Every instruction the policy is asked to act on, score or (flow heads) predict a velocity for in training."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def on_train_start(self, trainer, pl_module) -> None:
        policy, record = pl_module.policy, self.seen

        def remember(td):
            text = td.get("language_instruction")
            record.update(text.tolist() if isinstance(text, NonTensorStack) else [str(text)])

        # what GRPO calls, and what the imitation losses call (token heads: score; flow heads: predict_velocity)
        for name in [n for n in ("act", "score", "predict_velocity") if hasattr(policy, n)]:
            original = getattr(policy, name)

            def wrapped(td, *args, _original=original, **kwargs):
                remember(td)
                return _original(td, *args, **kwargs)

            setattr(policy, name, wrapped)


def _held_out(suite) -> set[str]:
    tasks = suite.all_tasks()
    out = {p for t in tasks for p in t.held_out_phrasings}
    return out | {p for t in tasks if t.split not in (TRAIN_SPLIT, PRETRAIN_SPLIT) for p in t.phrasings}


@pytest.mark.parametrize("policy_cls", [ReadingVLAPolicy, FlowVLAPolicy], ids=lambda c: c.__name__)
def test_no_held_out_phrasing_or_unseen_task_reaches_sft_or_grpo(tmp_path, policy_cls):
    """A real SFT fit and a real GRPO fit on the tabletop, token head and flow head: what the policy is trained on
    (SFT batches, GRPO rollouts and scoring) is all training phrasings."""
    from vla_grpo.data import DemoDataModule, model_links
    from vla_grpo.module import GRPOModule
    from vla_grpo.sft import SFTModule

    suite = TabletopSuite(image_size=16, seen_per_family=1)
    torch.manual_seed(0)
    sizes = dict(velocity_width=32) if policy_cls is FlowVLAPolicy else {}
    policy = policy_cls(action_dim=7, chunk_size=8, state_dim=8, image_size=16, hidden_dim=32,
                        channels=(8, 8, 8, 8), text_dim=16, **sizes)
    trainer_args = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    sft = SFTModule(policy, suite, eval_states_per_task=1)
    data = DemoDataModule(demos_per_task=1, cache_dir=str(tmp_path), tasks="train", first_state=30, batch_size=8,
                          **model_links(sft))
    record_sft = _Recorder()
    L.Trainer(max_steps=20, callbacks=[record_sft], **trainer_args).fit(sft, datamodule=data)
    grpo = GRPOModule(policy, suite, group_size=2, groups_per_step=1, max_rollout_rounds=2,
                      eval_states_per_task=1, dynamic_sampling=False)
    record_grpo = _Recorder()
    L.Trainer(max_steps=3, callbacks=[record_grpo], **trainer_args).fit(grpo)
    trainable = {p for t in suite.tasks(TRAIN_SPLIT) for p in t.phrasings}
    for record in (record_sft, record_grpo):
        assert record.seen and record.seen <= trainable
        assert not record.seen & _held_out(suite)
    assert len(record_sft.seen) > len(suite.tasks(TRAIN_SPLIT))  # more than one phrasing per task was used


def test_instruction_noise_is_only_inside_its_block():
    """SFT's augmentation perturbs forwards inside ``instruction_noise`` only: GRPO's act and score agree."""
    torch.manual_seed(0)
    policy = ReadingVLAPolicy(action_dim=2, chunk_size=2, state_dim=3, image_size=16, hidden_dim=16,
                              channels=(4, 4, 4, 4), text_dim=8)
    for block in policy.blocks:  # FiLM starts at the identity: give the instruction a say
        torch.nn.init.normal_(block.film.weight, std=0.5)
    td = TensorDict({"observation": {"image": torch.zeros(4, 3, 16, 16, dtype=torch.uint8),
                                     "state": torch.zeros(4, 3)},
                     "language_instruction": NonTensorStack(*["pick up the mug"] * 4)}, batch_size=[4])
    clean = policy._predict(td)
    with policy.instruction_noise(0.5):
        noisy = policy._predict(td)
    assert not torch.allclose(clean, noisy)
    torch.testing.assert_close(policy._predict(td), clean)  # off again after the block


def test_a_policy_with_a_local_encoder_carries_a_copy_of_it(tmp_path):
    """Loadable on another machine: a non-default encoder directory is copied into the policy directory."""
    import shutil

    from vla_grpo.policies.text import resolve_encoder_path

    local = tmp_path / "my_encoder"
    shutil.copytree(resolve_encoder_path(None), local)
    sizes = dict(action_dim=2, chunk_size=2, state_dim=3, image_size=16, hidden_dim=16, channels=(4, 4, 4, 4),
                 text_dim=8)
    torch.manual_seed(0)
    policy = ReadingVLAPolicy(text_encoder=str(local), **sizes)
    saved = policy.save_pretrained(tmp_path / "policy")
    shutil.rmtree(local)  # "another machine": the original directory is gone
    again = ReadingVLAPolicy(pretrained_path=str(saved), **{k: sizes[k] for k in ("action_dim", "chunk_size",
                                                                                   "state_dim", "image_size")})
    td = TensorDict({"observation": {"image": torch.zeros(2, 3, 16, 16, dtype=torch.uint8),
                                     "state": torch.zeros(2, 3)},
                     "language_instruction": NonTensorStack("pick up the mug", "push the plate")}, batch_size=[2])
    torch.testing.assert_close(again._predict(td), policy._predict(td))
