"""Two-process DDP on CPU (gloo) through the CLI: disjoint prompt shards, identical weights, and
both ranks' resume state in the checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["toy.yaml", "toy_flow.yaml"])  # token head; flow head (chains, step log-probs)
def test_two_process_ddp_runs_different_prompts_and_keeps_weights_identical(tmp_path, config):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "vla_grpo", "fit", "-c", str(ROOT / "conf" / config),
           "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=2",
           f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
           "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
           "--trainer.enable_progress_bar=false", "--model.groups_per_step=2", "--model.prompts_per_round=2",
           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
           "--trainer.callbacks.init_args.every_n_train_steps=1", f"--trainer.callbacks.init_args.dirpath={tmp_path}/ckpt",
           "--trainer.callbacks+=tests.ddp_probe.DDPProbe",
           f"--trainer.callbacks.init_args.out_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2
    assert ranks[0]["prompts"] and ranks[1]["prompts"]
    assert not set(map(tuple, ranks[0]["prompts"])) & set(map(tuple, ranks[1]["prompts"]))
    # bit for bit: DDP hands both ranks the same all-reduced gradient for the same weights (one computation)
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], abs=0)
    assert ranks[0]["weights_changed"] and ranks[1]["weights_changed"]
    # the checkpoint (written by rank 0) carries both ranks' samplers and random streams for an exact resume
    resume = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=True)["grpo_resume"]
    assert resume["world_size"] == 2 and len(resume["ranks"]) == 2
    assert not torch.equal(resume["ranks"][0]["rng"][0], resume["ranks"][1]["rng"][0])
