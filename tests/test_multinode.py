"""Multi-node DDP on one machine: two "nodes" of one process each, launched by two ``torchrun``
commands on localhost as a cluster launches them (gloo), then the checkpoint resumed on one process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit_args(run: Path, *extra: str) -> list[str]:
    return ["-m", "vla_grpo", "fit", "-c", str(ROOT / "conf/toy.yaml"), "--trainer.callbacks=[]",
            f"--trainer.max_steps={STEPS}", f"--trainer.val_check_interval={STEPS}", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
            "--model.groups_per_step=2", "--model.prompts_per_round=2", "--model.eval_states_per_task=3",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.init_args.save_last=true", f"--trainer.callbacks.init_args.dirpath={run}/ckpt",
            "--trainer.callbacks+=tests.ddp_probe.DDPProbe", f"--trainer.callbacks.init_args.out_dir={run}", *extra]


def _two_nodes(run: Path) -> list[subprocess.CompletedProcess]:
    """``torchrun --nnodes 2 --node-rank {0,1}`` on localhost, the command docs/SCALING.md gives."""
    port, env = _free_port(), dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}",
         "--master-addr=127.0.0.1", f"--master-port={port}",
         *_fit_args(run, "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_nodes_on_localhost_shard_prompts_and_eval_keep_weights_equal_and_resume_on_one(tmp_path):
    for proc in _two_nodes(tmp_path):
        assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [STEPS, STEPS]
    # every step ends with the same weights on both nodes, and the weights moved. Bit for bit: both
    # apply the same all-reduced gradient to the same weights in the same order (one computation)
    assert len(ranks[0]["step_weights"]) == len(ranks[1]["step_weights"]) == STEPS
    for a, b in zip(ranks[0]["step_weights"], ranks[1]["step_weights"], strict=True):
        assert a == pytest.approx(b, abs=0)
    assert ranks[0]["weights_changed"]
    # each node rolls out its own prompt shard
    drawn = [set(map(tuple, r["prompts"])) for r in ranks]
    assert drawn[0] and drawn[1] and not drawn[0] & drawn[1]
    # one eval, sharded over the nodes (each episode once) and all-reduced: both log the pooled rate
    items = [[tuple(it[:3]) for it in r["eval_items"]] for r in ranks]
    assert items[0] and items[1] and not set(items[0]) & set(items[1])
    assert ranks[0]["eval_metrics"] == ranks[1]["eval_metrics"]
    for split in {it[0] for r in ranks for it in r["eval_items"]}:
        outcomes = [it[3] for r in ranks for it in r["eval_items"] if it[0] == split]
        assert ranks[0]["eval_metrics"][f"eval/{split}/success"] == pytest.approx(sum(outcomes) / len(outcomes))
    # the 2-node checkpoint resumes on one process: weights, optimizer and step continue, the prompt
    # statistics are re-sharded
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["grpo_resume"]["world_size"] == 2
    one = tmp_path / "one"
    proc = subprocess.run([sys.executable, *_fit_args(one, f"--ckpt_path={ckpt}", f"--trainer.max_steps={STEPS + 1}")],
                          cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="default"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming a 2-rank checkpoint on 1 ranks" in proc.stderr
    assert json.loads((one / "rank0.json").read_text())["global_step"] == STEPS + 1
