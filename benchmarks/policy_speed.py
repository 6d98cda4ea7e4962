"""Policy throughput on CPU: decisions/s at rollout (sampling) and at update (score + backward).

A *decision* is one policy call for one sub-env: a whole action chunk of
``chunk`` x ``action_dim`` actions (tokens, or a denoising chain of ``K`` steps).
Each policy in ``vla_grpo.policies.POLICIES`` is built at its default (tiny)
sizes for a tabletop-like suite and fed batches of random observations with
realistic instructions::

    python benchmarks/policy_speed.py --image-size 64 --batch 1 64 --threads 1   # the tabletop configs' sizes
    python benchmarks/policy_speed.py --image-size 64 --batch 1 64 --flow-steps 1 2 4 10 --flow-expert
    python benchmarks/policy_speed.py --batch 64 --seconds 5

Prints one row per policy and batch size: parameters, milliseconds per batch
and decisions/s for ``act`` (no grad, sampling at temperature 1.6) and for
``score`` + backward, and each policy's decisions/s as a ratio of the token
reading VLA's (``/ Reading``, the quickstart's policy) at the same batch, all
measured side by side in one run. Policies are built at the tabletop configs'
sizes (``CONFIG_SIZES``: 32 action bins, TinyVLA's hidden 256), the HF VLA at its
tiny defaults; ``--flow-steps`` adds the flow VLA at other ``K`` (Euler steps) and
``--flow-expert`` the flow VLA with its π0-style transformer expert.
"""
from __future__ import annotations

import argparse
import time

import torch
from tensordict import NonTensorStack, TensorDict

from vla_grpo.policies import POLICIES, FlowVLAPolicy, ReadingVLAPolicy, TinyVLAPolicy

#: the sizes conf/sft_tabletop.yaml and conf/quickstart.yaml build each policy at
CONFIG_SIZES = {TinyVLAPolicy: dict(hidden_dim=256, vocab_size=32), ReadingVLAPolicy: dict(vocab_size=32)}

#: the flow VLA's pi0-style expert at a CPU size (64-wide tokens, 2 layers)
EXPERT_SIZES = dict(velocity="expert", velocity_width=64, velocity_depth=2)

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


def measure(cls, args: argparse.Namespace, batch: int, **extra) -> dict[str, float]:
    """Build ``cls`` at its config sizes (and ``extra``) and time ``act`` and ``score`` + backward on
    ``batch`` observations."""
    torch.manual_seed(0)
    policy = cls(action_dim=args.action_dim, chunk_size=args.chunk, state_dim=args.state_dim,
                 image_size=args.image_size, temperature=1.6, **{**CONFIG_SIZES.get(cls, {}), **extra})
    obs = observations(batch, args.image_size, args.state_dim)
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
        "act_per_s": batch / act_s,
        "update_ms": update_s * 1e3,
        "update_per_s": batch / update_s,
    }


def rows_to_measure(args: argparse.Namespace) -> list[tuple[str, type, dict]]:
    """(name, class, extra arguments): every registered policy, then the flow VLA's other ``K`` and expert."""
    rows = [(cls.__name__, cls, {}) for cls in POLICIES]
    rows += [(f"FlowVLAPolicy K={k}", FlowVLAPolicy, {"num_steps": k}) for k in args.flow_steps]
    if args.flow_expert:
        rows.append(("FlowVLAPolicy expert", FlowVLAPolicy, EXPERT_SIZES))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--action-dim", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--state-dim", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--flow-steps", type=int, nargs="*", default=[], help="more K for the flow VLA")
    parser.add_argument("--flow-expert", action="store_true", help="the flow VLA with its transformer expert too")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.image_size} px, action_dim {args.action_dim}, chunk {args.chunk}, "
          f"{torch.get_num_threads()} threads, CPU")
    header = (f"{'policy':<22}{'batch':>6}{'params':>11}{'act ms':>9}{'act dec/s':>11}{'/ Reading':>10}"
              f"{'update ms':>11}{'update dec/s':>14}{'/ Reading':>10}")
    print(header)
    print("-" * len(header))
    for batch in args.batch:
        rows = {name: measure(cls, args, batch, **extra) for name, cls, extra in rows_to_measure(args)}
        ref = rows[ReadingVLAPolicy.__name__]
        for name, r in rows.items():
            print(f"{name:<22}{batch:>6}{r['params']:>11,}{r['act_ms']:>9.1f}{r['act_per_s']:>11.0f}"
                  f"{r['act_per_s'] / ref['act_per_s']:>10.2f}{r['update_ms']:>11.1f}{r['update_per_s']:>14.0f}"
                  f"{r['update_per_s'] / ref['update_per_s']:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
