"""SFT: behaviour cloning of a token-head VLA on demonstrations, the GRPO starting point.

:class:`DemoDataModule` reads a suite's HDF5 demos (robomimic layout,
:mod:`vla_grpo.envs.demos`), writing them with the suite's scripted experts
first when the file is missing, and serves one (observation, action chunk)
window per demo step. :class:`SFTModule` fits the policy's action tokens with
cross-entropy and evaluates greedily on the suite with the same code as GRPO
(:mod:`vla_grpo.evaluation`), logging ``eval/<split>/success``.

Action chunks come from TorchRL's ``ActionChunkTransform``: step ``t`` gets
``a[t], ..., a[t+H-1]``; steps past the episode's end repeat its last action
and are flagged in ``action_is_pad``, and **padded steps are left out of the
loss** (their tokens never reach the simulator: the episode ends on success).

Commands::

    python -m vla_grpo fit -c conf/sft_tabletop.yaml                          # 1 demo per task
    python -m vla_grpo fit -c conf/sft_tabletop.yaml --data.demos_per_task=20
    python -m vla_grpo fit -c conf/grpo_tabletop.yaml \\
        --model.init_from=runs/sft_tabletop/checkpoints/last.ckpt

With ``--data.demos_per_task=0`` nothing is trained: the fit only writes the
untrained policy to ``last.ckpt``, so the GRPO command above works unchanged.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict
from torch.utils.data import DataLoader, Dataset
from torchrl.envs import ActionChunkTransform

from vla_grpo.envs.base import Suite
from vla_grpo.envs.demos import Demo, DemoFileError, read_demos
from vla_grpo.evaluation import EvalPrompts, evaluate_prompts
from vla_grpo.keys import (
    ACTION_CHUNK_KEY,
    ACTION_TOKENS_KEY,
    IMAGE_KEY,
    INSTRUCTION_KEY,
    STATE_KEY,
    TASK_INDEX_KEY,
)
from vla_grpo.rollout import GroupedRollout

#: True where a chunk step ran past its episode's end (repeats the last action)
PAD_KEY = "action_is_pad"


# -- windows -------------------------------------------------------------------
def chunk_demos(demos: list[Demo], chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Action-chunk targets ``[N, H, A]`` and padding mask ``[N, H]`` of every demo step.

    The demos are laid end to end in one row with ``done`` on each last step, so
    ``ActionChunkTransform`` cuts the chunks at the episode boundaries.
    """
    actions = torch.from_numpy(np.concatenate([d.actions for d in demos])).float()
    done = torch.zeros(len(actions), dtype=torch.bool)
    done[np.cumsum([len(d) for d in demos]) - 1] = True
    row = TensorDict({"action": actions[None], ("next", "done"): done.view(1, -1, 1)},
                     batch_size=[1, len(actions)])
    row = ActionChunkTransform(chunk_size, chunk_key=ACTION_CHUNK_KEY, pad_key=PAD_KEY)(row)
    return row.get(ACTION_CHUNK_KEY)[0], row.get(PAD_KEY)[0]


class DemoWindows(Dataset):
    """One (observation, action chunk, padding mask) window per demo step.

    Everything lives in a few stacked tensors and a batch is gathered in one
    indexing call (``__getitems__``), not 64 small ones.

    Args:
        demos: demonstrations (e.g. from :func:`vla_grpo.envs.demos.read_demos`).
        chunk_size: actions per window, the policy's ``chunk_size``.
    """

    def __init__(self, demos: list[Demo], chunk_size: int) -> None:
        self.instructions = sorted({d.instruction for d in demos})
        which = {s: i for i, s in enumerate(self.instructions)}
        if demos:
            self.images = torch.from_numpy(np.concatenate([d.images for d in demos])).permute(0, 3, 1, 2)
            self.states = torch.from_numpy(np.concatenate([d.states for d in demos])).float()
            self.chunks, self.pad = chunk_demos(demos, chunk_size)
        else:
            self.images, self.states = torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 1)
            self.chunks, self.pad = torch.zeros(0, chunk_size, 1), torch.zeros(0, chunk_size, dtype=torch.bool)
        self.instruction_id = torch.tensor([which[d.instruction] for d in demos for _ in range(len(d))],
                                           dtype=torch.int64)
        self.task_index = torch.tensor([d.task_index for d in demos for _ in range(len(d))], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitems__(self, indices: list[int]) -> TensorDict:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return TensorDict(
            {
                IMAGE_KEY: self.images[idx],
                STATE_KEY: self.states[idx],
                INSTRUCTION_KEY: NonTensorStack(*[self.instructions[i] for i in self.instruction_id[idx].tolist()]),
                ACTION_CHUNK_KEY: self.chunks[idx],
                PAD_KEY: self.pad[idx],
                TASK_INDEX_KEY: self.task_index[idx],
            },
            batch_size=[len(idx)],
        )

    def __getitem__(self, i: int) -> TensorDict:
        return self.__getitems__([i])[0]


def _batch_is_ready(batch: TensorDict) -> TensorDict:
    # ``__getitems__`` already built the batch
    return batch


# -- augmentation ----------------------------------------------------------------
def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ random shift: pad by replicating the border, crop back at a random offset per image."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    dx, dy = (torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, images.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, images.shape[1], h, w)
    return out.gather(3, cols).round().to(images.dtype)


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness and contrast per image, each scaled by ``1 ± strength``."""
    n = images.shape[0]

    def factor() -> torch.Tensor:
        return 1 + strength * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)

    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean * factor()
    return x.clamp(0, 255).round().to(images.dtype)


# -- the data module ---------------------------------------------------------------
def _check_demos_fit(path: Path, demos: list[Demo], policy) -> None:
    """One-line errors when the demos' dimensions differ from the policy's."""
    if not demos:
        return
    d = demos[0]
    for name, got in (("action_dim", d.actions.shape[1]), ("state_dim", d.states.shape[1]),
                      ("image_size", d.images.shape[1])):
        want = getattr(policy, name, None)
        if want is not None and got != want:
            raise DemoFileError(f"{path}: demos have {name}={got} but the policy expects {name}={want}")


class DemoDataModule(L.LightningDataModule):
    """Demonstration windows for :class:`SFTModule`, generated by the suite's experts if missing.

    The suite (for generating demos and naming the cache file) and the chunk size
    are the model's (``model.suite``, ``model.policy.chunk_size``), so they are
    configured once.

    Args:
        demos_per_task: demos used per task (the first ones of each task in the
            file); 0 trains nothing (see :meth:`SFTModule.on_fit_end`).
        demo_file: an HDF5 demo file; written with the suite's scripted experts
            when missing. None: ``<cache_dir>/<suite>_<size>px_<tasks>_<n>x_from<first_state>.hdf5``.
        cache_dir: where generated demo files go when ``demo_file`` is None.
        tasks: a split name, ``"all"``, or comma-separated task names to clone.
        first_state: first initial-state id of generated demos; at or above the
            model's ``eval_states_per_task`` so demos never start from an eval state.
        batch_size: windows per optimizer step.
        num_workers: DataLoader worker processes.
        random_shift: pixels of DrQ random-shift augmentation (0 = off).
        color_jitter: brightness/contrast jitter strength (0 = off).
    """

    def __init__(
        self,
        demos_per_task: int = 1,
        demo_file: str | None = None,
        cache_dir: str = "runs/demos",
        tasks: str = "train",
        first_state: int = 25,  # eval uses states 0..eval_states_per_task-1
        batch_size: int = 32,
        num_workers: int = 0,
        random_shift: int = 0,
        color_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value, low in (("demos_per_task", demos_per_task, 0), ("first_state", first_state, 0),
                                 ("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                 ("random_shift", random_shift, 0), ("color_jitter", color_jitter, 0)):
            if value < low:
                raise ValueError(f"`--data.{name}` must be >= {low} (got {value})")
        self.save_hyperparameters()
        self.dataset: DemoWindows | None = None
        self.action_stats: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def _model(self) -> L.LightningModule:
        return self.trainer.lightning_module

    def demo_path(self, suite: Suite) -> Path:
        """The demo file: ``demo_file``, or the cache path named after what it holds."""
        h = self.hparams
        if h.demo_file is not None:
            return Path(h.demo_file)
        tasks = re.sub(r"[^A-Za-z0-9_.-]+", "+", h.tasks)
        name = f"{suite.name}_{suite.image_size}px_{tasks}_{h.demos_per_task}x_from{h.first_state}.hdf5"
        return Path(h.cache_dir) / name

    def prepare_data(self) -> None:
        """Write the demos with the suite's scripted experts if the file is missing (rank 0)."""
        if self.hparams.demos_per_task == 0:
            return
        suite = self._model.suite
        path = self.demo_path(suite)
        if path.exists():
            return
        from vla_grpo.envs.demos import write_demos

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial.hdf5")
        # the experts skip the rare failed state; later states take its place
        write_demos(suite, tmp, self.hparams.tasks, self.hparams.demos_per_task,
                    first_state=self.hparams.first_state, progress=False)
        tmp.replace(path)  # a killed run never leaves a half-written file under the real name

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.dataset is not None:
            return
        self._warn_on_eval_overlap()
        demos = self.load_demos()
        _check_demos_fit(self.demo_path(self._model.suite), demos, self._model.policy)
        self.dataset = DemoWindows(demos, self._model.policy.chunk_size)
        if demos:
            actions = torch.from_numpy(np.concatenate([d.actions for d in demos])).float()
            # OpenVLA: bins span the 1st..99th percentile, so rare outliers don't waste bins
            self.action_stats = (torch.quantile(actions, 0.01, dim=0), torch.quantile(actions, 0.99, dim=0))

    def load_demos(self) -> list[Demo]:
        """The first ``demos_per_task`` demos of each task of ``tasks`` in the demo file."""
        n = self.hparams.demos_per_task
        if n == 0:
            return []
        from vla_grpo.envs.demos import resolve_tasks

        suite = self._model.suite
        path = self.demo_path(suite)
        wanted = [suite.all_tasks()[i].name for i in resolve_tasks(suite, self.hparams.tasks)]
        by_task: dict[str, list[Demo]] = {name: [] for name in wanted}
        for demo in read_demos(path):
            if demo.task_name in by_task and len(by_task[demo.task_name]) < n:
                by_task[demo.task_name].append(demo)
        short = [f"{name} ({len(got)})" for name, got in by_task.items() if len(got) < n]
        if short:
            raise DemoFileError(f"{path}: fewer than `--data.demos_per_task`={n} demos for {', '.join(short[:3])}"
                             f"{' ...' if len(short) > 3 else ''}")
        return [d for name in wanted for d in by_task[name]]

    def _warn_on_eval_overlap(self) -> None:
        eval_states = getattr(self._model.hparams, "eval_states_per_task", 0)
        if self.hparams.demo_file is None and self.hparams.first_state < eval_states:
            warnings.warn(f"`--data.first_state`={self.hparams.first_state} < `--model.eval_states_per_task`="
                          f"{eval_states}: demos start from eval initial states", stacklevel=2)

    def train_dataloader(self) -> DataLoader:
        # an empty set (0 demos per task) can't be shuffled; Lightning then skips the loop
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=len(self.dataset) > 0,
                          num_workers=self.hparams.num_workers, collate_fn=_batch_is_ready)

    def val_dataloader(self) -> DataLoader:
        return self._model.eval_dataloader()

    test_dataloader = val_dataloader

    def on_after_batch_transfer(self, batch: TensorDict, dataloader_idx: int) -> TensorDict:
        # augment training batches only; eval batches are prompts, not windows
        if not (self.trainer is not None and self.trainer.training and isinstance(batch, TensorDict)):
            return batch
        images = batch.get(IMAGE_KEY)
        if self.hparams.random_shift > 0:
            images = random_shift(images, self.hparams.random_shift)
        if self.hparams.color_jitter > 0:
            images = color_jitter(images, self.hparams.color_jitter)
        batch.set(IMAGE_KEY, images)
        return batch


# -- the token prior ---------------------------------------------------------------------
def token_log_prior(policy, chunks: torch.Tensor, pad: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Log-frequency ``[H, A, V]`` of each action token at each chunk step in the demos (pads left out)."""
    H, A, V = policy.chunk_size, policy.action_dim, policy.vocab_size
    tokens = policy.encode_actions(chunks).long()  # [N, H, A]
    slot = (torch.arange(H)[:, None] * A + torch.arange(A)[None]) * V  # [H, A]
    keep = (~pad)[..., None].expand_as(tokens)
    counts = torch.bincount((tokens + slot)[keep], minlength=H * A * V).float().view(H, A, V)
    return (counts + smoothing).log() - (counts + smoothing).log().mean(-1, keepdim=True)


def init_token_prior(policy, log_prior: torch.Tensor) -> bool:
    """Start the action head at the demos' token marginals; False if the policy has no such head.

    Why: from uniform logits, every step's largest and most consistent gradient
    is "move towards the marginal" (the 3 unused rotation dims alone are 24 of
    56 tokens). With Adam that gradient drives TinyVLA's tanh trunk into
    saturation within ~30 steps: features become constant and the policy
    predicts the marginal for every observation (measured: loss stuck at the
    marginal entropy even on 64 frames). Starting at the marginal leaves only
    observation-dependent gradient.

    Uses ``policy.set_token_prior(log_prior)`` when the policy has it, else the
    bias of the output ``nn.Linear`` laid out ``[H * A * V]`` (TinyVLA's head).
    """
    hook = getattr(policy, "set_token_prior", None)
    if callable(hook):
        hook(log_prior)
        return True
    size = log_prior.numel()
    heads = [m for m in policy.modules() if isinstance(m, torch.nn.Linear) and m.out_features == size
             and m.bias is not None]
    if len(heads) != 1:
        return False
    with torch.no_grad():
        heads[0].bias.copy_(log_prior.reshape(-1).to(heads[0].bias))
    return True


# -- the module -----------------------------------------------------------------------
class SFTModule(L.LightningModule):
    """Behaviour cloning of a token-head VLA: cross-entropy on its action tokens.

    Targets are ``policy.encode_actions(chunk)`` under the demos' q01/q99
    normalization (set from the data module before training; the bounds are
    policy buffers, so they travel in the checkpoint to GRPO). Logits are taken
    at temperature 1.0. Validation is greedy on the suite, as in GRPO.

    Args:
        policy: a token-head VLA policy (``vla_grpo.policies``).
        suite: the env suite to evaluate on (and to write demos with).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``constant`` or ``cosine`` (to 10% of ``lr`` at ``trainer.max_steps``).
        eval_states_per_task: greedy episodes per task at validation (states ``0..n-1``).
        eval_splits: splits to evaluate (None = all of the suite's splits).
        eval_num_envs: simulators stepped together at validation.
        eval_num_workers: simulator processes at validation (1 = in this process).
        token_prior_init: start the action head at the demos' token marginals
            (see :func:`init_token_prior`; without it TinyVLA collapses to the marginal).
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        suite: Suite,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        eval_states_per_task: int = 8,
        eval_splits: list[str] | None = None,
        eval_num_envs: int = 16,
        eval_num_workers: int = 1,
        token_prior_init: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("eval_states_per_task", eval_states_per_task), ("eval_num_envs", eval_num_envs),
                            ("eval_num_workers", eval_num_workers)):
            if value < 1:
                raise ValueError(f"`--model.{name}` must be >= 1 (got {value})")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"`--model.lr_schedule` must be 'constant' or 'cosine' (got {lr_schedule!r})")
        self.save_hyperparameters(ignore=["policy", "suite"])
        self.policy = policy
        self.suite = suite
        # cross-entropy against the demo tokens is taken on the plain logits
        self.policy.temperature = 1.0
        self.rollout: GroupedRollout | None = None
        _check_policy_fits_suite(policy, suite)

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule if stage == "fit" else None
        stats = getattr(data, "action_stats", None)
        if stats is not None:
            self.policy.set_action_stats(*stats)
            if self.hparams.token_prior_init:
                prior = token_log_prior(self.policy, data.dataset.chunks, data.dataset.pad)
                if not init_token_prior(self.policy, prior):
                    warnings.warn(f"{type(self.policy).__name__} has no `set_token_prior` or [H*A*V] output "
                                  "layer: SFT starts from uniform action logits", stacklevel=2)
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

    def bc_loss(self, batch: TensorDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over the action tokens of un-padded chunk steps."""
        batch.set(ACTION_TOKENS_KEY, self.policy.encode_actions(batch.get(ACTION_CHUNK_KEY)))
        log_probs, entropy = self.policy.score(batch)  # [B, H, A]
        weight = (~batch.get(PAD_KEY)).to(log_probs.dtype).unsqueeze(-1).expand_as(log_probs)
        count = weight.sum().clamp_min(1)
        loss = -(log_probs * weight).sum() / count
        metrics = {"train/entropy": (entropy.detach() * weight).sum() / count,
                   "train/token_likelihood": (log_probs.detach().exp() * weight).sum() / count}
        return loss, metrics

    def training_step(self, batch: TensorDict, batch_idx: int) -> torch.Tensor:
        loss, metrics = self.bc_loss(batch)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch.shape[0])
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=batch.shape[0])
        return loss

    def eval_dataloader(self) -> DataLoader:
        """The eval prompts (every split's tasks x states ``0..eval_states_per_task-1``).

        Served as ``val``/``test`` loaders by :class:`DemoDataModule`: with a data
        module attached, Lightning takes every loader from it.
        """
        splits = self.hparams.eval_splits or self.suite.splits
        dataset = EvalPrompts(self.suite, splits, self.hparams.eval_states_per_task)
        return DataLoader(dataset, batch_size=self.hparams.eval_num_envs, collate_fn=list)

    def validation_step(self, batch, batch_idx: int) -> None:
        results = evaluate_prompts(self.rollout, self.policy, batch)
        for split, (succ, count) in results.items():
            self.log(f"eval/{split}/success", succ / count, batch_size=count,
                     on_step=False, on_epoch=True, sync_dist=True)

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


def _check_policy_fits_suite(policy, suite: Suite) -> None:
    for name in ("action_dim", "state_dim", "image_size"):
        want, got = getattr(suite, name), getattr(policy, name, None)
        if got is not None and got != want:
            raise ValueError(f"`--model.policy.init_args.{name}` is {got} but the suite {suite.name!r} has {name}={want}")


__all__ = ["PAD_KEY", "DemoDataModule", "DemoWindows", "SFTModule", "chunk_demos", "color_jitter",
           "init_token_prior", "random_shift", "token_log_prior"]
