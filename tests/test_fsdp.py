"""FSDP2 through Lightning (``ModelParallelStrategy``) on CPU: a 2-rank fit of the transformers VLA
with bf16 mixed precision, activation checkpointing and sharded checkpoints, resumed exactly from one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FSDP = '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}'


def _fit(run: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vla_grpo", "fit", "-c", str(ROOT / "conf/toy_hf.yaml"), "--trainer.devices=2",
           f"--trainer.strategy={FSDP}", "--trainer.precision=bf16-mixed", f"--trainer.max_steps={steps}",
           "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
           f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
           "--model.groups_per_step=2", "--model.prompts_per_round=2", "--model.eval_states_per_task=2",
           "--model.policy.init_args.gradient_checkpointing=true",
           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
           "--trainer.callbacks.init_args.save_last=true", "--trainer.callbacks.init_args.save_top_k=-1",
           "--trainer.callbacks.init_args.every_n_train_steps=1", f"--trainer.callbacks.init_args.dirpath={run}/ckpt",
           "--trainer.callbacks+=tests.ddp_probe.DDPProbe", f"--trainer.callbacks.init_args.out_dir={run}",
           # the eval extras roll out on every rank together (rank 0's video too): no rank waits alone
           "--trainer.callbacks+=vla_grpo.callbacks.SplitEvaluation", "--trainer.callbacks.init_args.at_fit_end=true",
           "--trainer.callbacks+=vla_grpo.callbacks.EvalVideo", "--trainer.callbacks.init_args.episodes_per_split=1",
           *extra]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """A sharded checkpoint's policy weights, whole (torch.distributed.checkpoint -> one state dict)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = ckpt.parent / f"{ckpt.name}.pt"
    dcp_to_torch_save(ckpt, out)
    state = torch.load(out, weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("policy.")}


def test_a_two_rank_fsdp_bf16_fit_of_the_transformers_vla_trains_and_resumes_exactly(tmp_path):
    proc = _fit(tmp_path, 3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        shard = r["sharding"]
        assert shard["class"].startswith("FSDP") and shard["param_dtypes"] == ["torch.bfloat16"]
        assert shard["local_numel"] < 0.6 * shard["full_numel"]  # each rank holds about half the weights
        assert r["global_step"] == 3 and r["weights_changed"]
    assert {p.parent.name for p in tmp_path.rglob("eval/videos/*/*.*")} >= {"step_000003"}  # rank 0 wrote the clips
    # sharded checkpoints: one file of shards per rank, plus Lightning's meta.pt with the GRPO resume state
    ckpts = {s: next((tmp_path / "ckpt").glob(f"epoch=*-step={s}.ckpt")) for s in (1, 2)}
    assert ckpts[2].is_dir() and sorted(p.name for p in ckpts[2].glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert torch.load(ckpts[2] / "meta.pt", weights_only=False)["grpo_resume"]["world_size"] == 2
    step1, step2 = _weights(ckpts[1]), _weights(ckpts[2])
    assert any(not torch.equal(step1[k], step2[k]) for k in step1)
    # resumed from step 2, the third step lands on the uninterrupted run's weights, bit for bit: the
    # same 2-rank layout, the same shards and batches, so the same computation (another rank count
    # or batch layout would agree to rounding only)
    resumed = _fit(tmp_path / "resumed", 3, f"--ckpt_path={ckpts[2]}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    straight, again = _weights(tmp_path / "ckpt" / "last.ckpt"), _weights(tmp_path / "resumed" / "ckpt" / "last.ckpt")
    for k, v in straight.items():
        torch.testing.assert_close(again[k], v, rtol=0, atol=0)
