"""Export a checkpoint's policy as a policy directory (``save_pretrained``) that configs load by path.

    python scripts/export_policy.py runs/pretrain_tabletop/checkpoints/last.ckpt \
        -c conf/pretrain_tabletop.yaml checkpoints/tabletop_base

The config builds the policy (its class and sizes); the checkpoint's ``policy.*``
weights and action normalization are loaded into it strictly, then
``policy.save_pretrained(out)`` writes ``vla_policy.json`` + the weights (the
frozen text encoder is referenced, not copied). A config then loads it with
``--model.policy.init_args.pretrained_path=<out>``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("-c", "--config", required=True, help="the config whose model.policy the checkpoint holds")
    args = parser.parse_args(argv)
    from vla_grpo.cli import VLACLI
    from vla_grpo.init_from import load_policy_weights

    model = VLACLI(args=["-c", args.config, "--trainer.logger=false"], run=False).model
    load_policy_weights(model.policy, args.checkpoint)
    path = model.policy.save_pretrained(args.out)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"wrote {path} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
