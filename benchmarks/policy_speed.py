"""Policy throughput on CPU: decisions/s at rollout (sampling) and at update (score + backward).

A *decision* is one policy call for one sub-env: a whole action chunk of
``chunk`` x ``action_dim`` tokens. Each policy in ``vla_grpo.policies.POLICIES``
is built at its default (tiny) sizes for a tabletop-like suite and fed batches
of random 128-px observations with realistic instructions::

    python benchmarks/policy_speed.py                       # batch 16, 128 px, action_dim 7, chunk 8
    python benchmarks/policy_speed.py --batch 64 --seconds 5
    python benchmarks/policy_speed.py --threads 1

Prints one row per policy: parameters, milliseconds per batch and decisions/s
for ``act`` (no grad, sampling at temperature 1.6) and for ``score`` + backward.
"""
from __future__ import annotations

import argparse
import time

import torch
from tensordict import NonTensorStack, TensorDict

from vla_grpo.policies import POLICIES

INSTRUCTIONS = (
    "put the red block on the green block",
    "pick up the blue block and place it in the bowl",
    "push the yellow block to the left of the plate",
    "stack the two blocks nearest to the robot",
)


def observations(batch: int, image_size: int, state_dim: int) -> TensorDict:
    """A batch of random observations in the VLA schema."""
    gen = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            "observation": {
                "image": torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=gen),
                "state": torch.randn(batch, state_dim, generator=gen),
            },
            "language_instruction": NonTensorStack(*(INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch))),
        },
        batch_size=[batch],
    )


def _timed(fn, seconds: float) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), over at least ``seconds``."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def measure(cls, args: argparse.Namespace) -> dict[str, float]:
    """Build ``cls`` at its default sizes and time ``act`` and ``score`` + backward."""
    torch.manual_seed(0)
    policy = cls(action_dim=args.action_dim, chunk_size=args.chunk, state_dim=args.state_dim,
                 image_size=args.image_size, temperature=1.6)
    obs = observations(args.batch, args.image_size, args.state_dim)
    with torch.no_grad():
        sampled = policy.act(obs.clone())

    def act() -> None:
        with torch.no_grad():
            policy.act(obs.clone())

    def update() -> None:
        policy.zero_grad(set_to_none=True)
        log_probs, _ = policy.score(sampled)
        log_probs.mean().backward()

    act_s, update_s = _timed(act, args.seconds), _timed(update, args.seconds)
    return {
        "params": sum(p.numel() for p in policy.parameters()),
        "act_ms": act_s * 1e3,
        "act_per_s": args.batch / act_s,
        "update_ms": update_s * 1e3,
        "update_per_s": args.batch / update_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--action-dim", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--state-dim", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.image_size} px, action_dim {args.action_dim}, chunk {args.chunk}, "
          f"{torch.get_num_threads()} threads, CPU")
    header = f"{'policy':<16}{'params':>10}{'act ms':>10}{'act dec/s':>12}{'update ms':>12}{'update dec/s':>14}"
    print(header)
    print("-" * len(header))
    for cls in POLICIES:
        r = measure(cls, args)
        print(f"{cls.__name__:<16}{r['params']:>10,}{r['act_ms']:>10.1f}{r['act_per_s']:>12.0f}"
              f"{r['update_ms']:>12.1f}{r['update_per_s']:>14.0f}")


if __name__ == "__main__":
    main()
