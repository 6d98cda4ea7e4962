"""The whole loop learns: `fit` on conf/toy.yaml raises the logged success rate."""
from __future__ import annotations

from pathlib import Path

from vla_grpo.cli import main
from vla_grpo.tb import read_scalars

ROOT = Path(__file__).resolve().parents[1]


def test_toy_fit_raises_success_rate(tmp_path):
    main(["fit", "-c", str(ROOT / "conf/toy.yaml"), "--seed_everything=0",
          f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
          "--trainer.max_steps=80", "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
          "--trainer.enable_progress_bar=false"])
    scalars = read_scalars(tmp_path)
    success = [v for _, v in scalars["rollout/success_rate"]]
    assert len(success) == 80
    first, last = sum(success[:10]) / 10, sum(success[-10:]) / 10
    print(f"rollout success: first 10 steps {first:.3f}, last 10 steps {last:.3f}")
    assert last >= first + 0.25, (first, last)
    # the standard diagnostics are logged under stable names
    for tag in ("train/loss", "train/clip_fraction", "train/approx_kl", "train/entropy",
                "rollout/success_rate", "rollout/kept_group_fraction", "perf/env_steps_per_s"):
        assert tag in scalars, tag
    entropy = [v for _, v in scalars["train/entropy"]]
    assert entropy[-1] < entropy[0]
