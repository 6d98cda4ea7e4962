"""GRPOModule: the SimpleVLA-RL training loop as a LightningModule.

One training step: draw prompts -> roll out ``group_size`` trajectories per
prompt at ``rollout_temperature`` -> binary success reward -> dynamic sampling
(keep mixed groups; roll out new prompts until ``groups_per_step`` are held,
at most ``max_rollout_rounds`` rounds; surplus carried over) -> group-normalised
advantage -> ``ppo_epochs`` x ``num_minibatches`` updates of the loss ->
grad-norm clip -> log. Validation runs greedy episodes on every split.

Commands::

    python -m vla_grpo fit -c conf/toy.yaml
    python -m vla_grpo fit -c conf/toy.yaml --trainer.devices 2 --trainer.strategy ddp
    python -m vla_grpo validate -c conf/toy.yaml --ckpt_path runs/toy/.../last.ckpt
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import lightning as L
import torch
from tensordict import NonTensorStack, TensorDict
from torch.utils.data import DataLoader, IterableDataset

from vla_grpo.args import at_least, check_optimizer
from vla_grpo.envs.base import TRAIN_SPLIT, Suite
from vla_grpo.evaluation import EvalSpec, greedy_validation_step
from vla_grpo.groups import (
    DynamicSamplingBuffer,
    IdAllocator,
    split_trajectories,
    trajectory_returns,
    unstable_episodes,
)
from vla_grpo.guard import NonFiniteGuard, NonFiniteUpdatesError  # noqa: F401  (re-exported)
from vla_grpo.init_from import init_from_checkpoint
from vla_grpo.keys import ENTROPY_KEY, INSTRUCTION_KEY, LOG_PROBS_KEY, REF_LOG_PROBS_KEY
from vla_grpo.losses import GRPOLoss, PolicyLoss
from vla_grpo.policies.base import check_policy_fits_suite
from vla_grpo.prompts import PROMPT_SAMPLERS, make_prompt_sampler, select_train_tasks
from vla_grpo.resume import (
    RESUME_KEY,
    TrainingRNG,
    gather_resume_state,
    restore_resume_state,
    step_restorer,
)
from vla_grpo.rollout import GroupedRollout
from vla_grpo.sharding import grad_norm, is_sharded, shard_policy
from vla_grpo.stages import SFTStage


class _StepTicker(IterableDataset):
    """GRPO makes its data online: the train dataloader only ticks steps."""

    def __iter__(self):
        step = 0
        while True:
            yield step
            step += 1


def _first_train_state(train_first_state: int | None, eval_states_per_task: int) -> int:
    """Rollouts start at this initial state: right after the eval states unless set."""
    return eval_states_per_task if train_first_state is None else train_first_state


def _check_prompt_pool(suite: Suite, first: int, train_tasks: list[str] | None) -> None:
    """Config errors for a training prompt pool that is empty or names unknown tasks."""
    if train_tasks is not None:
        select_train_tasks(suite, train_tasks)
    most = max(t.num_init_states for t in suite.tasks(TRAIN_SPLIT))
    if first >= most:
        raise ValueError(f"`--model.train_first_state` is {first} (eval_states_per_task when unset) but "
                         f"train tasks have at most {most} initial states: nothing left to train on")


class GRPOModule(L.LightningModule):
    """GRPO with binary success rewards for VLA policies (token heads and flow-matching heads alike).

    Args:
        policy: a VLA policy (``vla_grpo.policies``).
        suite: the env suite to roll out on (``vla_grpo.envs``).
        loss: the policy loss (``vla_grpo.losses``); GRPOLoss by default.
        group_size: trajectories per prompt, G.
        rollout_temperature: sampling temperature at rollout *and* at update (a flow head:
            each denoising step's noise variance is scaled by it, ``policy.temperature``).
        groups_per_step: mixed groups trained on per step (per rank).
        prompts_per_round: prompts rolled out together in one round.
        max_rollout_rounds: rounds per step before training on what is held.
        dynamic_sampling: drop groups whose outcomes are all equal.
        prompt_sampling: ``success_aware`` (favour prompts likely to give mixed
            groups), ``thompson`` (Thompson sampling over tasks' mixed-group
            rates, then success-aware within the task: fewer discarded
            rollouts, but it learned less in the quickstart) or ``uniform``.
        num_workers: simulator processes per rank (1 = in the trainer process).
        worker_timeout_s: a simulator worker silent this long is restarted.
        max_worker_restarts: a round whose simulator worker died, hung or raised is
            re-run after restarting the workers, at most this many times in a row.
        pipeline_rollouts: step two halves of the simulator workers in turn, the
            policy acting on one half while the other simulates (needs
            ``num_workers >= 2``): faster with the policy on a GPU, slower on a
            few CPU cores (docs/experiments/rollout_engine.md).
        ppo_epochs: passes over the step's data.
        num_minibatches: optimizer steps per epoch (equal on every rank).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient-norm clip.
        max_nonfinite_updates: an update whose loss or gradient is NaN/inf is skipped (weights
            and optimizer state unchanged; ``train/nonfinite_fraction`` logs the share of a
            step's updates skipped); this many in a row stop the run with
            :class:`NonFiniteUpdatesError`.
        eval_states_per_task: greedy episodes per task at validation (initial states
            ``0 .. eval_states_per_task-1``).
        train_first_state: rollouts use each train task's initial states from this
            one on. None: right after the eval states, so RL never trains on an
            episode it is evaluated on; 0: every state (LIBERO practice).
        eval_splits: splits to evaluate (None = all of the suite's splits).
        train_tasks: roll out only these train tasks: names, or family prefixes
            ending in ``/`` (``["spatial/"]``); None = the whole train split.
        init_from: a checkpoint (``.ckpt`` from SFT or GRPO) to start the policy from.
        sft: an :class:`~vla_grpo.stages.SFTStage` to start from instead: at the
            start of ``fit``, its checkpoint, fitted first when missing (demos ->
            SFT -> GRPO in one command).
        seed: seed of the prompt draws.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        suite: Suite,
        loss: PolicyLoss | None = None,
        group_size: int = 8,  # SimpleVLA-RL: G = 8
        rollout_temperature: float = 1.6,  # SimpleVLA-RL: 1.0 -> 1.6 widens exploration
        groups_per_step: int = 4,
        prompts_per_round: int | None = None,
        max_rollout_rounds: int = 4,
        dynamic_sampling: bool = True,
        prompt_sampling: str = "success_aware",
        num_workers: int = 1,
        worker_timeout_s: float = 120.0,
        max_worker_restarts: int = 3,
        pipeline_rollouts: bool = False,
        ppo_epochs: int = 1,
        num_minibatches: int = 2,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        max_nonfinite_updates: int = 3,
        eval_states_per_task: int = 8,
        train_first_state: int | None = None,
        eval_splits: list[str] | None = None,
        train_tasks: list[str] | None = None,
        init_from: str | None = None,
        sft: SFTStage | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["policy", "suite", "loss", "sft"])
        self._check_args(suite, sft)
        self.automatic_optimization = False
        self.policy = policy
        self.suite = suite
        self.loss = loss if loss is not None else GRPOLoss()
        self.policy.temperature = rollout_temperature
        self.prompts_per_round = prompts_per_round or groups_per_step
        self.reference = None
        self.sft = sft
        self.nonfinite = NonFiniteGuard(max_nonfinite_updates)
        self.training_rng = TrainingRNG()
        init_from_checkpoint(self.policy, init_from)
        check_policy_fits_suite(self.policy, self.suite)

    def _check_args(self, suite: Suite, sft: SFTStage | None) -> None:
        """One-line errors naming the ``--model.*`` field for bad values."""
        hp = self.hparams
        minimum = dict(group_size=2, groups_per_step=1, max_rollout_rounds=1, ppo_epochs=1, num_minibatches=1,
                       eval_states_per_task=1, max_nonfinite_updates=1, max_worker_restarts=0, num_workers=1,
                       prompts_per_round=1, train_first_state=0)
        at_least("model", **{k: (hp[k], m) for k, m in minimum.items() if hp[k] is not None})
        _check_prompt_pool(suite, _first_train_state(hp.train_first_state, hp.eval_states_per_task), hp.train_tasks)
        check_optimizer(hp.lr, hp.weight_decay)
        if not hp.max_grad_norm > 0:
            raise ValueError(f"`--model.max_grad_norm` must be > 0 (got {hp.max_grad_norm})")
        if hp.rollout_temperature <= 0:
            raise ValueError(f"`--model.rollout_temperature` must be > 0 (got {hp.rollout_temperature})")
        if hp.prompt_sampling not in PROMPT_SAMPLERS:  # here too, so a bad value fails before setup
            raise ValueError(f"`--model.prompt_sampling` must be one of {', '.join(map(repr, PROMPT_SAMPLERS))} "
                             f"(got {hp.prompt_sampling!r})")
        if hp.init_from and sft is not None:
            raise ValueError("`--model.init_from` and `--model.sft` both name a starting point; give one")

    # -- Lightning plumbing ----------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.sft is not None and stage == "fit":
            init_from_checkpoint(self.policy, self.sft.run(rank=self.global_rank))
        hp, rank, world = self.hparams, self.global_rank, self.trainer.world_size
        self.sampler = make_prompt_sampler(
            hp.prompt_sampling, self.suite, group_size=hp.group_size,
            first_state=_first_train_state(hp.train_first_state, hp.eval_states_per_task),
            tasks=hp.train_tasks, rank=rank, world_size=world, seed=hp.seed)
        self.rollout = GroupedRollout(self.suite, num_envs=self.prompts_per_round * hp.group_size,
                                      chunk_size=self.policy.chunk_size, num_workers=hp.num_workers,
                                      seed=hp.seed * 1_000 + rank, worker_timeout_s=hp.worker_timeout_s,
                                      max_restarts=hp.max_worker_restarts, pipeline=hp.pipeline_rollouts)
        self.buffer = DynamicSamplingBuffer(hp.group_size, dynamic_sampling=hp.dynamic_sampling)
        self.group_ids, self.traj_ids = IdAllocator(rank, world), IdAllocator(rank, world)
        if self.loss.needs_reference and self.reference is None:
            self.reference = copy.deepcopy(self.policy).requires_grad_(False).eval()

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2): shard the policy over the data-parallel ranks."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        if isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError("`--trainer.strategy`: FSDPStrategy (FSDP1) gathers the weights per policy call, and ranks "
                             "make different numbers of rollout calls (deadlock); use ModelParallelStrategy (FSDP2, "
                             "docs/SCALING.md)")
        if isinstance(self.trainer.strategy, ModelParallelStrategy):
            if self.device_mesh["tensor_parallel"].size() != 1:
                raise ValueError("`--trainer.strategy`: the policy is sharded with FSDP only; give ModelParallelStrategy "
                                 "tensor_parallel_size=1 and data_parallel_size=<number of processes> (its 'auto' "
                                 "splits each node's devices for tensor parallelism)")
            bf16 = "bf16" in str(self.trainer.precision)
            shard_policy(self.policy, self.device_mesh["data_parallel"], param_dtype=torch.bfloat16 if bf16 else None)

    def teardown(self, stage: str) -> None:
        if getattr(self, "rollout", None) is not None:
            self.rollout.close()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.policy.parameters(), lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StepTicker(), batch_size=None)

    @property
    def eval_spec(self) -> EvalSpec:
        """The greedy eval episodes: every split's tasks x states ``0..eval_states_per_task-1``."""
        return EvalSpec(self.hparams.eval_splits, self.hparams.eval_states_per_task,
                        self.prompts_per_round * self.hparams.group_size)

    def val_dataloader(self) -> DataLoader:
        return self.eval_spec.dataloader(self.suite)

    test_dataloader = val_dataloader

    # -- the GRPO step -----------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        stop = getattr(self, "stop_flag", None)  # set by vla_grpo.stopping.SafeStop
        # a signal during the rounds abandons the step: its state goes back, its rounds are re-run on resume
        rounds = stop.abandonable_rounds(step_restorer(self)) if stop is not None else nullcontext()
        with self.training_rng.fork(self.device):
            with rounds:
                data, filler, rollout_metrics = self.collect()
            metrics = self.update(data, filler)
        metrics.update(rollout_metrics)
        self.log_dict(metrics, prog_bar=False, on_step=True, on_epoch=False, batch_size=1)
        self.log("success", rollout_metrics["rollout/success_rate"], prog_bar=True, batch_size=1)

    def _reduce(self, value: float, op: str = "sum") -> float:
        """``value`` reduced over the ranks by the strategy (``sum`` or ``min``); itself on one process."""
        return float(self.trainer.strategy.reduce(torch.tensor(float(value), dtype=torch.float64), reduce_op=op))

    def collect(self) -> tuple[TensorDict | None, TensorDict | None, dict[str, float]]:
        """Roll out rounds until every rank holds ``groups_per_step`` mixed groups.

        Returns this rank's groups (None: it holds none), the row an empty minibatch scores
        (:meth:`_minibatch_step`; None only if no round ran: then every rank holds groups) and the metrics.
        """
        G, need = self.hparams.group_size, self.hparams.groups_per_step
        successes, episodes, unstable, rounds, env_rate, filler = 0.0, 0, 0, 0, [], None
        stop = getattr(self, "stop_flag", None)
        while rounds < self.hparams.max_rollout_rounds:
            if self._reduce(self.buffer.num_groups, "min") >= need:
                break
            if stop is not None:  # a rank was signalled: every rank abandons the step here, together
                stop.abandon_if_requested(lambda flag: self._reduce(flag, "max") > 0)
            returns, round_unstable, filler = self._rollout_round()
            successes += float(returns.sum())
            episodes += returns.numel()
            unstable += round_unstable
            env_rate.append(self.rollout.last_env_steps_per_s)
            rounds += 1
        stats = self.buffer.stats()
        data = self.buffer.pop_groups(need)
        filler = filler if data is None else data[:1]
        completed = max(stats["completed_groups"], 1)
        metrics = {
            "rollout/success_rate": successes / max(episodes, 1),
            "rollout/kept_group_fraction": stats["written_groups"] / completed,
            "rollout/discarded_rollouts": float(stats["dropped_groups"] * G),
            "rollout/rounds": float(rounds),
            "rollout/train_groups": float(0 if data is None else torch.unique(data["group_id"]).numel()),
            "perf/env_steps_per_s": sum(env_rate) / max(len(env_rate), 1),
            "perf/decisions_per_s": self.rollout.last_decisions_per_s,
            "rollout/unstable_episodes": float(unstable),  # ended early by a diverged simulation
            **{f"faults/worker_{kind}": float(n) for kind, n in self.rollout.faults.items()},  # run totals
        }
        return data, filler, metrics

    def _rollout_round(self) -> tuple[torch.Tensor, int, TensorDict]:
        """One round of the paper's loop: the ``[prompts, G]`` returns, the unstable episodes and
        the round's first decision row, with its instruction (what an empty minibatch scores)."""
        n, G = self.prompts_per_round, self.hparams.group_size
        prompts = self.sampler.draw(n)                                                               # draw
        rnd = self.rollout.run_round(self.policy, prompts, self.group_ids.take(n), self.traj_ids.take(n * G))
        trajs = split_trajectories(rnd.data, rnd.traj_ids,                                           # split, reward
                                   tokens_per_decision=self.policy.tokens_per_decision,
                                   action_keys=self.policy.action_train_keys)
        self.buffer.extend(trajs, rnd.instructions)                                                  # keep mixed groups
        returns = trajectory_returns(trajs).view(n, G)
        self.sampler.update_groups(rnd.prompts, returns)                                             # update sampler
        first = trajs[0][:1].set(INSTRUCTION_KEY, NonTensorStack(rnd.instructions[0]))
        return returns, unstable_episodes(rnd.data), first

    def update(self, data: TensorDict | None, filler: TensorDict | None) -> dict[str, float]:
        """``ppo_epochs`` x ``num_minibatches`` optimizer steps (the same count on every rank).

        ``filler``: a decision row that a minibatch without data scores at weight 0 (under FSDP
        every rank must join every layer's gather: :meth:`_minibatch_step`).
        """
        opt = self.optimizers()
        if self._reduce(0 if data is None else data.shape[0]) == 0:
            # no mixed group on any rank: the step still counts (so max_steps and
            # val_check_interval hold when nothing is learnable yet) but moves no
            # weight -- the optimizer skips parameters whose grad is None
            opt.zero_grad(set_to_none=True)
            opt.step()
            return {}
        n = 0 if data is None else data.shape[0]
        if data is not None and self.reference is not None:
            with torch.no_grad():
                data.set(REF_LOG_PROBS_KEY, self.reference.score(data.to(self.device))[0].cpu())
        sums: dict[str, float] = {}
        steps = self.hparams.ppo_epochs * self.hparams.num_minibatches
        for epoch in range(self.hparams.ppo_epochs):
            order = torch.randperm(n)
            for i, idx in enumerate(order.tensor_split(self.hparams.num_minibatches)):
                last = epoch == self.hparams.ppo_epochs - 1 and i == self.hparams.num_minibatches - 1
                out = self._minibatch_step(opt, None if idx.numel() == 0 else data[idx], last, filler)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
        return {f"train/{k}": v / steps for k, v in sums.items()}

    def _minibatch_step(self, opt, batch: TensorDict | None, last: bool, filler: TensorDict | None) -> dict[str, float]:
        if batch is None and is_sharded(self.policy):
            # an empty rank still joins FSDP's per-layer gathers and reductions: a real pass, weight 0
            loss = self.policy.score(filler.to(self.device))[0].sum() * 0.0
            out = {}
        elif batch is None:
            # an empty rank still joins DDP's gradient all-reduce, with zero gradient
            loss = sum(p.sum() * 0.0 for p in self.policy.parameters())
            out = {}
        else:
            batch = batch.to(self.device)
            log_probs, entropy = self.policy.score(batch)
            batch.set(LOG_PROBS_KEY, log_probs)
            batch.set(ENTROPY_KEY, entropy)
            terms = self.loss(batch)
            loss = sum(v for k, v in terms.items() if k.startswith("loss_"))
            out = {k: float(v.detach()) for k, v in terms.items()}
            out["loss"] = float(loss.detach())
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        norm = grad_norm(self.policy)
        if self.nonfinite.skip(loss, norm, step=self.global_step, on_any_rank=lambda bad: self._reduce(bad) > 0):
            # the optimizer skips parameters whose grad is None: weights and AdamW's moments stay
            opt.zero_grad(set_to_none=True)
            out["nonfinite_fraction"] = 1.0
        else:
            # through Lightning, so precision plugins unscale first and strategies clip their way
            self.clip_gradients(opt, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
            out["nonfinite_fraction"] = 0.0
        if last:
            opt.step()
        else:
            # Lightning counts every LightningOptimizer.step as a global step; going
            # through the strategy (same precision/DDP/FSDP path, no counter) for the
            # inner minibatches keeps `trainer.max_steps` counting GRPO steps.
            self.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None, model=self)
        if batch is not None:
            out["grad_norm"] = float(norm) if math.isfinite(float(norm)) else float("nan")
        return out

    # -- exact resume (vla_grpo.resume) -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if getattr(self, "sampler", None) is not None:
            checkpoint[RESUME_KEY] = gather_resume_state(self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if getattr(self, "sampler", None) is not None:
            restore_resume_state(self, checkpoint.get(RESUME_KEY))

    # -- evaluation ---------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> dict[str, list[bool]]:
        return greedy_validation_step(self, batch)

    test_step = validation_step
