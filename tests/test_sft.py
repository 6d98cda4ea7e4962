"""SFT: chunk windows and padding, the policy's imitation loss, the BC loss falls, SFT -> GRPO checkpoint
hand-off, bad demo files."""
from __future__ import annotations

import shutil

import h5py
import lightning as L
import numpy as np
import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from tests.helpers import run_cli_error
from vla_grpo.callbacks import SplitEvaluation
from vla_grpo.data import (
    PAD_KEY,
    DemoDataModule,
    DemoWindows,
    color_jitter,
    model_links,
    random_shift,
)
from vla_grpo.envs.demos import Demo, write_demos
from vla_grpo.envs.tabletop import TabletopSuite
from vla_grpo.losses import TokenBCLoss
from vla_grpo.module import GRPOModule
from vla_grpo.policies.tiny import TinyVLAPolicy
from vla_grpo.sft import SFTModule

SIZE, CHUNK = 16, 4
TASKS = "goal/lift_mug,spatial/behind_plate"


def _demo(actions: list[float], task_index: int = 0) -> Demo:
    T = len(actions)
    return Demo(
        actions=np.repeat(np.asarray(actions, dtype=np.float32)[:, None], 2, axis=1),
        images=np.full((T, 4, 4, 3), task_index, dtype=np.uint8), states=np.zeros((T, 3), np.float32),
        rewards=np.eye(T, dtype=np.float32)[-1], dones=np.eye(T, dtype=np.uint8)[-1],
        instruction=f"task {task_index}", task_name=f"t{task_index}", task_index=task_index, init_state_id=0)


def test_windows_repeat_the_last_action_and_mask_it_at_episode_ends():
    windows = DemoWindows([_demo([0, 1, 2]), _demo([10, 11, 12, 13, 14], task_index=1)], chunk_size=4)
    assert len(windows) == 8
    batch = windows.__getitems__(list(range(8)))
    chunks = batch.get(("vla_action", "chunk"))[..., 0]
    expected = torch.tensor([[0, 1, 2, 2], [1, 2, 2, 2], [2, 2, 2, 2],       # never runs into demo 2
                             [10, 11, 12, 13], [11, 12, 13, 14], [12, 13, 14, 14],
                             [13, 14, 14, 14], [14, 14, 14, 14]], dtype=torch.float32)
    torch.testing.assert_close(chunks, expected)
    real = torch.tensor([3, 2, 1, 4, 4, 3, 2, 1])  # un-padded steps per window
    torch.testing.assert_close((~batch.get(PAD_KEY)).sum(-1), real)
    assert not batch.get(PAD_KEY)[:, 0].any()  # the step's own action is always real
    assert batch.get("language_instruction").tolist()[3] == "task 1"
    assert batch.get(("observation", "image")).shape == (8, 3, 4, 4)


def test_augmentations_keep_shape_and_are_off_at_zero():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    shifted = random_shift(images, 2)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    torch.testing.assert_close(random_shift(images, 0), images)
    torch.testing.assert_close(color_jitter(images, 0.0), images)
    assert color_jitter(images, 0.5).dtype == torch.uint8


def test_token_prior_is_the_demo_marginal_without_pads():
    policy = TinyVLAPolicy(action_dim=2, chunk_size=2, state_dim=3, image_size=16, hidden_dim=8, vocab_size=8)
    windows = DemoWindows([_demo([-1, 1, 1])], chunk_size=2)  # tokens 0, 7, 7 in both dims
    prior = policy.token_log_prior(windows.chunks, windows.pad)
    assert prior.shape == (2, 2, 8)
    assert prior[0].argmax(-1).tolist() == [7, 7]       # step 0 of the windows: -1, 1, 1
    assert prior[1, 0, 7] > prior[1, 0, 0] == prior[1, 0, 3]  # step 1: 1, 1 and one pad (not counted)
    assert policy.set_token_prior(prior)
    torch.testing.assert_close(policy.head.bias, prior.reshape(-1))


# -- fits on a tiny tabletop demo set ------------------------------------------------
@pytest.fixture(scope="module")
def suite() -> TabletopSuite:
    return TabletopSuite(image_size=SIZE)


@pytest.fixture(scope="module")
def demo_file(suite, tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "demos.hdf5"
    write_demos(suite, path, TASKS, per_task=1, first_state=25, progress=False)
    return path


def _policy() -> TinyVLAPolicy:
    torch.manual_seed(0)
    return TinyVLAPolicy(action_dim=7, chunk_size=CHUNK, state_dim=8, image_size=SIZE, hidden_dim=32)


def _fit(suite, root, demo_file, *, demos_per_task=1, max_steps=60, validate=False):
    L.seed_everything(0)  # the shuffling, so the loss curve is the same every run
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    module = SFTModule(_policy(), suite, lr=1e-2, eval_states_per_task=1, eval_splits=["unseen_goal"],
                       eval_num_envs=3)
    data = DemoDataModule(demos_per_task=demos_per_task, demo_file=str(demo_file), tasks=TASKS, batch_size=16,
                          **model_links(module))
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0,
                                               save_on_train_epoch_end=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[SplitEvaluation(at_fit_start=False, at_fit_end=False), ckpt, Record()], num_sanity_val_steps=0,
                        limit_val_batches=1.0 if validate else 0, val_check_interval=max_steps if validate else None,
                        check_val_every_n_epoch=None if validate else 1, default_root_dir=root)
    trainer.fit(module, datamodule=data)
    return module, trainer, losses, root / "ckpt" / "last.ckpt"


def _obs(suite, n: int = 6) -> TensorDict:
    env = suite.make_env(n, chunk_size=CHUNK)
    prompts = TensorDict({"task_index": torch.arange(n).view(-1, 1) % 27, "init_state_id": torch.zeros(n, 1).long(),
                          "group_id": torch.zeros(n, 1).long()}, batch_size=[n])
    td = env.reset(prompts)
    env.close()
    return td


def _greedy(policy, td):
    out = policy.act(td.clone(), greedy=True)
    return out.get(("vla_action", "tokens")), out.get(("vla_action", "chunk"))


def test_sft_fits_the_policys_own_imitation_loss_unless_one_is_named(suite):
    assert type(SFTModule(_policy(), suite).loss) is TokenBCLoss  # policy.imitation_loss()

    class Counted(TokenBCLoss):
        calls = 0

        def forward(self, policy, batch):
            Counted.calls += 1
            return super().forward(policy, batch)

    module = SFTModule(_policy(), suite, loss=Counted())
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer attached
    n = 4
    batch = TensorDict({"observation": {"image": torch.zeros(n, 3, SIZE, SIZE, dtype=torch.uint8),
                                        "state": torch.zeros(n, 8)},
                        "language_instruction": NonTensorStack(*["lift the mug"] * n),
                        "vla_action": {"chunk": torch.zeros(n, CHUNK, 7)},
                        PAD_KEY: torch.zeros(n, CHUNK, dtype=torch.bool)}, batch_size=[n])
    loss = module.training_step(batch, 0)
    assert Counted.calls == 1 and loss.requires_grad


def test_the_sft_loss_is_a_command_line_choice():
    from vla_grpo.cli import VLACLI

    cli = VLACLI(args=["-c", "conf/sft_tabletop.yaml", "--trainer.logger=false",
                       "--model.loss=vla_grpo.losses.TokenBCLoss"], run=False)
    assert type(cli.model.loss) is TokenBCLoss


@pytest.fixture(scope="module")
def fitted(suite, demo_file, tmp_path_factory):
    return _fit(suite, tmp_path_factory.mktemp("sft"), demo_file, validate=True)


def test_bc_loss_falls_and_eval_is_logged(fitted):
    module, trainer, losses, _ = fitted
    assert len(losses) == 60
    # the head starts at the demos' token marginals, so what falls is the observation-dependent part
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10])
    metrics = trainer.callback_metrics
    assert "eval/unseen_goal/success" in metrics
    # the val loop's per-episode outcomes reach SplitEvaluation's per-task rows (no second rollout)
    split_eval = next(cb for cb in trainer.callbacks if isinstance(cb, SplitEvaluation))
    assert len(split_eval.results) == 1
    rates = split_eval.last.task_success()["unseen_goal"]
    assert len(rates) == 3 and np.mean(list(rates.values())) == pytest.approx(float(metrics["eval/unseen_goal/success"]))


def test_action_stats_are_the_demos_q01_q99(fitted, demo_file):
    module, *_ = fitted
    from vla_grpo.envs.demos import read_demos

    actions = torch.from_numpy(np.concatenate([d.actions for d in read_demos(demo_file)]))
    torch.testing.assert_close(module.policy.action_high, torch.maximum(torch.quantile(actions, 0.99, 0),
                                                                        torch.quantile(actions, 0.01, 0) + 1e-4))
    torch.testing.assert_close(module.policy.action_tokenizer.low, module.policy.action_low)


def test_sft_checkpoint_into_grpo_gives_identical_greedy_actions(fitted, suite):
    module, _, _, ckpt = fitted
    grpo = GRPOModule(_policy_with_other_seed(), suite, init_from=str(ckpt))
    torch.testing.assert_close(grpo.policy.action_low, module.policy.action_low)
    td = _obs(suite)
    module.policy.eval()
    for got, want in zip(_greedy(grpo.policy, td), _greedy(module.policy, td), strict=True):
        torch.testing.assert_close(got, want)


def _policy_with_other_seed() -> TinyVLAPolicy:
    torch.manual_seed(123)
    return TinyVLAPolicy(action_dim=7, chunk_size=CHUNK, state_dim=8, image_size=SIZE, hidden_dim=32)


def test_zero_demos_saves_the_untrained_policy_for_grpo(suite, demo_file, tmp_path):
    module, trainer, losses, ckpt = _fit(suite, tmp_path, demo_file, demos_per_task=0)
    assert losses == [] and trainer.global_step == 0 and ckpt.is_file()
    grpo = GRPOModule(_policy_with_other_seed(), suite, init_from=str(ckpt))
    untrained = _policy()
    td = _obs(suite)
    for got, want in zip(_greedy(grpo.policy, td), _greedy(untrained, td), strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(grpo.policy.action_low, -torch.ones(7))  # the suite's own [-1, 1] range


def _five_dim_actions_copy(demo_file, tmp_path):
    """A copy of the demo file whose actions have 5 dimensions instead of 7."""
    bad = tmp_path / "bad.hdf5"
    shutil.copy(demo_file, bad)
    with h5py.File(bad, "r+") as f:
        for key in f["data"]:
            actions = f["data"][key]["actions"][()]
            del f["data"][key]["actions"]
            f["data"][key].create_dataset("actions", data=actions[:, :5])
    return bad


def test_action_dim_mismatch_is_one_line_naming_file_and_dimension(suite, demo_file, tmp_path):
    bad = _five_dim_actions_copy(demo_file, tmp_path)
    with pytest.raises(ValueError) as err:
        _fit(suite, tmp_path, bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "action_dim=7" in message


def test_bad_demo_file_through_the_cli_is_one_error_line_and_exit_2(demo_file, tmp_path, capsys):
    bad = _five_dim_actions_copy(demo_file, tmp_path)
    err = run_cli_error(capsys, "fit", "-c", "conf/sft_tabletop.yaml", f"--data.demo_file={bad}",
                        f"--data.tasks={TASKS}", f"--trainer.default_root_dir={tmp_path}",
                        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=1",
                        f"--trainer.callbacks.init_args.dirpath={tmp_path}/ckpt", "--trainer.limit_val_batches=0",
                        f"--model.suite.init_args.image_size={SIZE}", f"--model.policy.init_args.image_size={SIZE}",
                        "--model.policy.init_args.pretrained_path=null")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(bad) in lines[0] and "action_dim=5" in lines[0], err[-2000:]
    assert "Traceback" not in err


def test_too_few_demos_per_task_names_the_file(suite, demo_file, tmp_path):
    with pytest.raises(ValueError, match=r"demos\.hdf5: fewer than `--data.demos_per_task`=2"):
        _fit(suite, tmp_path, demo_file, demos_per_task=2)


def test_missing_demo_file_is_written_by_the_experts_and_cached(suite, tmp_path):
    data = DemoDataModule(demos_per_task=1, cache_dir=str(tmp_path), tasks="goal/lift_mug", first_state=30,
                          suite=suite)
    path = data.demo_path()
    assert path.name == "tabletop_16px_goal+lift_mug_1x_from30.hdf5"
    data.prepare_data()
    stamp = path.stat().st_mtime_ns
    data.prepare_data()
    assert path.stat().st_mtime_ns == stamp
    with h5py.File(path) as f:
        assert f["data/demo_0"].attrs["init_state_id"] == 30

