"""Chaining the recipe's stages in one command: SFT first, when its checkpoint is missing.

``GRPOModule(sft=SFTStage(...))`` makes ``python -m vla_grpo fit -c conf/quickstart.yaml``
run demos -> SFT -> GRPO on a fresh machine: if the SFT stage's ``last.ckpt`` is
not there yet, the SFT config is fitted first (demos are written by its
DataModule), then GRPO starts from its weights. An existing checkpoint is
reused, so a second GRPO run (another seed, an ablation) skips the SFT stage.

The SFT fit runs as a child ``python -m vla_grpo fit`` process rather than
in-process: a fresh process gets its own seed, Trainer and logger state, and
the GRPO run's CLI arguments can't leak into it. It runs in ``GRPOModule.setup``
at the start of ``fit`` (instantiating a config runs nothing). Under DDP only
global rank 0 runs it; the other ranks wait for the checkpoint (so the run
directory must be on a filesystem every node sees).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from vla_grpo.stopping import STOP_SIGNALS, RunStopped


class SFTStage:
    """Fit an SFT config into ``<root_dir>/checkpoints/last.ckpt`` unless a finished one is there.

    Args:
        config: the SFT YAML (``conf/sft_tabletop.yaml``); its model must be an
            ``SFTModule`` whose policy and suite match the GRPO config's.
        root_dir: the SFT run's directory (logs, checkpoints); its
            ``checkpoints/last.ckpt`` is what GRPO starts from.
        args: extra command-line overrides for the SFT fit
            (``["--data.demos_per_task=1", "--trainer.max_steps=3000"]``).
        wait_s: how long ranks other than 0 wait for rank 0's checkpoint.
    """

    def __init__(self, config: str, root_dir: str, args: list[str] | None = None, wait_s: float = 7200.0) -> None:
        if not Path(config).is_file():
            raise FileNotFoundError(f"`--model.sft.init_args.config`: no SFT config file at {config}")
        self.config = str(config)
        self.root_dir = Path(root_dir)
        self.args = list(args or [])
        self.wait_s = float(wait_s)

    @property
    def checkpoint(self) -> Path:
        return self.root_dir / "checkpoints" / "last.ckpt"

    @property
    def done_marker(self) -> Path:
        """Written after the SFT fit exits cleanly: Lightning rewrites ``last.ckpt`` every
        epoch, so a checkpoint alone may be an interrupted run's."""
        return self.root_dir / "sft_stage.done"

    def command(self, resume: bool = False) -> list[str]:
        """The child process's command line (``resume``: continue from the unfinished run's checkpoint)."""
        root = str(self.root_dir)
        return [
            sys.executable, "-m", "vla_grpo", "fit", "-c", self.config,
            f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root}",
            f"--trainer.callbacks.init_args.dirpath={self.checkpoint.parent}",
            *self.args,
            *([f"--ckpt_path={self.checkpoint}"] if resume else []),
        ]

    def run(self, rank: int = 0) -> Path:
        """The SFT checkpoint, fitted first if missing (by global rank 0; other ranks wait for it)."""
        if self.checkpoint.is_file() and self.done_marker.is_file():
            print(f"[vla_grpo] SFT stage: reusing {self.checkpoint}", flush=True)
            return self.checkpoint
        if rank != 0:
            return self._wait()
        # a checkpoint without the marker: an SFT run stopped by a signal (vla_grpo.stopping) or killed; continue it
        resume = self.checkpoint.is_file()
        state = "is from an unfinished SFT run, resuming it" if resume else "is missing, running"
        command = self.command(resume=resume)
        print(f"[vla_grpo] SFT stage: {self.checkpoint} {state}: {' '.join(command[1:])}", flush=True)
        self.done_marker.unlink(missing_ok=True)
        start = time.perf_counter()
        result = subprocess.run(command, check=False)
        stopped = {128 + int(s): int(s) for s in STOP_SIGNALS}.get(result.returncode)
        if stopped is not None:  # the SFT fit was stopped by a signal, with its checkpoint: so is this run
            raise RunStopped(stopped, 0, str(self.checkpoint),
                             where=f"the SFT stage stopped with {self.checkpoint}; the same command resumes it")
        if result.returncode != 0 or not self.checkpoint.is_file():
            raise RuntimeError(f"`--model.sft`: the SFT fit of {self.config} failed (exit {result.returncode}, "
                               f"no {self.checkpoint}); its output is above")
        self.done_marker.write_text(" ".join(self.command()[1:]) + "\n")
        print(f"[vla_grpo] SFT stage done in {time.perf_counter() - start:.0f} s: {self.checkpoint}", flush=True)
        return self.checkpoint

    def _wait(self) -> Path:
        deadline = time.monotonic() + self.wait_s
        while not self.done_marker.is_file():
            if time.monotonic() > deadline:
                raise RuntimeError(f"`--model.sft`: waited {self.wait_s:.0f} s for rank 0's {self.checkpoint}")
            time.sleep(2.0)
        return self.checkpoint

    def __repr__(self) -> str:
        return f"SFTStage(config={self.config!r}, root_dir={str(self.root_dir)!r}, args={self.args!r})"


__all__ = ["SFTStage"]
