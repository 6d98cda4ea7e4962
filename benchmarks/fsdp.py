"""FSDP2 against a full replica (DDP) for the transformers VLA: per-rank memory and decisions/s.

Both layouts are measured side by side in one run, on the same ranks, model and batches::

    torchrun --nproc-per-node 2 benchmarks/fsdp.py --size small              # CPU (gloo)
    torchrun --nproc-per-node 8 benchmarks/fsdp.py --size 1b --device cuda   # the GPU check of docs/SCALING.md

Per layout: the weights, gradients and AdamW state this rank holds (MB, counted from the
tensors' local shards; on CUDA also the peak allocated memory), rollout decisions/s per rank
(``act`` at batch ``--batch``; FSDP gathers the whole weights once for the rollout, as
``GroupedRollout`` does) and update decisions/s per rank (``score`` + backward + gradient
reduction + AdamW step). bf16 autocast in both; FSDP2 also gathers in bf16
(``MixedPrecisionPolicy``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_speed import observations  # noqa: E402

from vla_grpo.policies.hf import HFVLAPolicy  # noqa: E402
from vla_grpo.sharding import gathered, shard_policy  # noqa: E402

#: model sizes (``1b``: ~1 B parameters, a SigLIP-L-like tower and a 2k-wide, 16-layer decoder)
SIZES = {
    "tiny": dict(image_size=64, patch_size=16, vision_hidden=64, text_hidden=128, layers=2, heads=4),
    "small": dict(image_size=128, patch_size=16, vision_hidden=256, text_hidden=512, layers=6, heads=8),
    "1b": dict(image_size=224, patch_size=14, vision_hidden=1024, text_hidden=2048, layers=16, heads=16),
}


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def held_mb(policy: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    """Weights + gradients + optimizer state held by this rank, in MB."""
    tensors = [_local(p) for p in policy.parameters()] + [_local(p.grad) for p in policy.parameters()
                                                          if p.grad is not None]
    tensors += [_local(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _timed(fn, repeats: int) -> float:
    fn()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    dist.barrier()
    return (time.perf_counter() - start) / repeats


def measure(layout: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    policy = HFVLAPolicy(action_dim=7, chunk_size=8, state_dim=8, temperature=1.6,
                         gradient_checkpointing=True, **SIZES[args.size]).to(device)
    params = sum(p.numel() for p in policy.parameters())
    if layout == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        shard_policy(policy, init_device_mesh(device.type, (dist.get_world_size(),)), param_dtype=torch.bfloat16)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    obs = observations(args.batch, SIZES[args.size]["image_size"], 8).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    with torch.no_grad(), autocast, gathered(policy):
        sampled = policy.act(obs.clone())

    def act() -> None:
        with torch.no_grad(), autocast, gathered(policy):
            policy.act(obs.clone())

    def update() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = policy.score(sampled)[0].mean()
        loss.backward()
        if layout == "replica":  # what DDP does: every rank's full gradients all-reduced
            for p in policy.parameters():
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    act_s, update_s = _timed(act, args.repeats), _timed(update, args.repeats)
    return {"params": params, "held_mb": held_mb(policy, opt), "act_per_s": args.batch / act_s,
            "update_per_s": args.batch / update_s,
            "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="observations per rank and call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank = dist.get_rank()
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", 0))) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rows = {layout: measure(layout, args, device) for layout in ("replica", "fsdp")}
    if rank == 0:
        world = dist.get_world_size()
        print(f"HFVLAPolicy --size {args.size}: {rows['fsdp']['params'] / 1e6:.1f} M parameters, {world} ranks, "
              f"{args.device}, batch {args.batch} per rank, bf16 autocast, activation checkpointing")
        print(f"{'layout':<10}{'held MB/rank':>14}{'peak MB':>10}{'act dec/s/rank':>16}{'update dec/s/rank':>19}")
        for layout, r in rows.items():
            print(f"{layout:<10}{r['held_mb']:>14.1f}{r['peak_mb']:>10.0f}{r['act_per_s']:>16.1f}{r['update_per_s']:>19.1f}")
        f, d = rows["fsdp"], rows["replica"]
        print(f"fsdp / replica: memory held {f['held_mb'] / d['held_mb']:.2f}x, act {f['act_per_s'] / d['act_per_s']:.2f}x, "
              f"update {f['update_per_s'] / d['update_per_s']:.2f}x")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
