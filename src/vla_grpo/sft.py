"""SFT: a VLA policy imitates demonstrations with its own imitation loss, the GRPO starting point.

:class:`SFTModule` fits the policy to demo windows (:mod:`vla_grpo.data`: the
DataModule writes the demos with the suite's scripted experts when the file is
missing) with the loss the policy names (``policy.imitation_loss()``; token
policies: :class:`~vla_grpo.losses.TokenBCLoss`, cross-entropy on the action
tokens of un-padded chunk steps; flow policies: :class:`~vla_grpo.losses.FlowMatchingLoss`),
and evaluates greedily on the suite with the
same code as GRPO (:mod:`vla_grpo.evaluation`), logging ``eval/<split>/success``.

Commands::

    python -m vla_grpo fit -c conf/sft_tabletop.yaml                          # 1 demo per task
    python -m vla_grpo fit -c conf/sft_tabletop.yaml --data.demos_per_task=20
    python -m vla_grpo fit -c conf/grpo_tabletop.yaml \\
        --model.init_from=runs/sft_tabletop/checkpoints/last.ckpt

With ``--data.demos_per_task=0`` nothing is trained: the fit only writes the
untrained policy to ``last.ckpt``, so the GRPO command above works unchanged.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from tensordict import TensorDict
from torch.utils.data import DataLoader

from vla_grpo.args import at_least, check_optimizer
from vla_grpo.envs.base import Suite
from vla_grpo.evaluation import EvalSpec, greedy_validation_step
from vla_grpo.init_from import init_from_checkpoint
from vla_grpo.losses import ImitationLoss
from vla_grpo.policies.base import check_policy_fits_suite
from vla_grpo.rollout import GroupedRollout


class SFTModule(L.LightningModule):
    """SFT of a VLA policy on demo windows with its imitation loss; greedy validation on the suite.

    Actions are normalized with the demos' q01/q99 (set from the data module
    before training, unless the policy is pretrained; the bounds are policy
    buffers, so they travel in the checkpoint to GRPO). The policy prepares itself
    (``policy.prepare_imitation``: a token head runs at temperature 1.0 and starts at
    the demos' token prior). Validation is greedy on the suite, as in GRPO.

    Args:
        policy: a VLA policy (``vla_grpo.policies``).
        suite: the env suite to evaluate on (and to write demos with).
        loss: the imitation loss (``vla_grpo.losses``); None: the policy's own,
            ``policy.imitation_loss()``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``constant`` or ``cosine`` (to 10% of ``lr`` at ``trainer.max_steps``).
        eval_states_per_task: greedy episodes per task at validation (states ``0..n-1``).
        eval_splits: splits to evaluate (None = all of the suite's splits).
        eval_num_envs: simulators stepped together at validation.
        eval_num_workers: simulator processes at validation (1 = in this process).
        token_prior_init: start the action head at the demos' prior where the policy has one
            (``policy.prepare_imitation``: token heads start at the demos' token marginals; without
            it TinyVLA collapses to the marginal; a flow head ignores it).
        instruction_noise: norm of the noise on the instruction embedding in training
            forwards (``policy.instruction_noise``; policies without an embedding ignore it):
            the trunk learns to map the neighbourhood of a trained phrasing, where rewordings
            sit, alike (measurements: docs/experiments/reading_policy.md).
        init_from: a checkpoint to start from (the pretrained base, ``conf/pretrain_tabletop.yaml``):
            its weights *and* its action normalization are kept (the demos' statistics and
            token prior would change what the pretrained head's tokens mean).
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        suite: Suite,
        loss: ImitationLoss | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        eval_states_per_task: int = 8,
        eval_splits: list[str] | None = None,
        eval_num_envs: int = 16,
        eval_num_workers: int = 1,
        token_prior_init: bool = True,
        instruction_noise: float = 0.5,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        at_least("model", eval_states_per_task=(eval_states_per_task, 1), eval_num_envs=(eval_num_envs, 1),
                 eval_num_workers=(eval_num_workers, 1), instruction_noise=(instruction_noise, 0))
        check_optimizer(lr, weight_decay)
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"`--model.lr_schedule` must be 'constant' or 'cosine' (got {lr_schedule!r})")
        self.save_hyperparameters(ignore=["policy", "suite", "loss"])
        self.policy = policy
        self.suite = suite
        self.loss = loss if loss is not None else policy.imitation_loss()
        self.policy.prepare_imitation()  # the policy's own start (token heads: temperature 1)
        self.rollout: GroupedRollout | None = None
        check_policy_fits_suite(policy, suite)
        init_from_checkpoint(self.policy, init_from)

    def setup(self, stage: str) -> None:
        # the demos' statistics: the data module's (set up before the model) when it has demos
        data = self.trainer.datamodule if stage == "fit" else None
        stats = getattr(data, "action_stats", None)
        if stats is not None and not self.policy.pretrained:  # a base or init_from keeps its own
            self.policy.set_action_stats(*stats)
            self.policy.prepare_imitation(data.dataset.chunks, data.dataset.pad,
                                          start_at_prior=self.hparams.token_prior_init)
        if self.rollout is None:
            self.rollout = GroupedRollout(self.suite, num_envs=self.hparams.eval_num_envs,
                                          chunk_size=self.policy.chunk_size,
                                          num_workers=self.hparams.eval_num_workers)

    def teardown(self, stage: str) -> None:
        if self.rollout is not None:
            self.rollout.close()
            self.rollout = None

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.policy.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.trainer.max_steps
        if self.hparams.lr_schedule == "constant" or total is None or total <= 0:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.1 * self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch: TensorDict, batch_idx: int) -> torch.Tensor:
        with self.policy.instruction_noise(self.hparams.instruction_noise):
            terms = self.loss(self.policy, batch)
        loss = sum(value for key, value in terms.items() if key.startswith("loss_"))
        metrics = {f"train/{key}": value for key, value in terms.items() if not key.startswith("loss_")}
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch.shape[0])
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=batch.shape[0])
        return loss

    @property
    def eval_spec(self) -> EvalSpec:
        """The greedy eval episodes (every split's tasks x states ``0..eval_states_per_task-1``);
        linked into the data module, which serves them when one is attached."""
        return EvalSpec(self.hparams.eval_splits, self.hparams.eval_states_per_task, self.hparams.eval_num_envs)

    def val_dataloader(self) -> DataLoader:
        return self.eval_spec.dataloader(self.suite)

    test_dataloader = val_dataloader

    def validation_step(self, batch, batch_idx: int) -> dict[str, list[bool]]:
        return greedy_validation_step(self, batch)

    test_step = validation_step

    def on_fit_end(self) -> None:
        # No demos (or no steps): Lightning skips the loop and writes no checkpoint;
        # write the untrained policy where `last.ckpt` goes, so GRPO's init_from works unchanged.
        if self.trainer.global_step > 0:
            return
        for cb in self.trainer.checkpoint_callbacks:
            if getattr(cb, "dirpath", None) and getattr(cb, "save_last", False):
                path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
                self.trainer.save_checkpoint(path)
                self.print(f"no SFT steps taken: saved the untrained policy to {path}")


__all__ = ["SFTModule"]
