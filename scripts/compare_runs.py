"""Compare two runs of one config: checkpoints' policy weights, or eval_per_task.csv files.

    python scripts/compare_runs.py runs/a/checkpoints/last.ckpt runs/b/checkpoints/last.ckpt
    python scripts/compare_runs.py runs/a/.../eval/eval_per_task.csv runs/b/.../eval/eval_per_task.csv

Checkpoints: prints "bit-identical", or the largest absolute difference and the
tensor it is in (two runs on the same machine at one seed must be bit-identical;
on another CPU they agree to rounding, docs/RELIABILITY.md). CSV files: prints
"identical", or every (step, split, task) row whose successes or episodes differ.
Exits 0 when identical, 1 when not.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def _weights(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("policy.") and v.is_floating_point()}


def compare_checkpoints(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    if wa.keys() != wb.keys():
        print(f"different parameters: {sorted(wa.keys() ^ wb.keys())[:5]}")
        return False
    diffs = {k: float((wa[k].double() - wb[k].double()).abs().max()) for k in wa}
    worst = max(diffs, key=diffs.get)
    if diffs[worst] == 0.0:
        print(f"bit-identical ({len(wa)} tensors)")
        return True
    print(f"largest |difference| {diffs[worst]:.3g} in {worst}; "
          f"{sum(d > 0 for d in diffs.values())} of {len(wa)} tensors differ")
    return False


def _rows(path: Path) -> dict:
    with path.open(newline="") as f:
        return {(r["step"], r["split"], r["task"]): r for r in csv.DictReader(f)}


def compare_csvs(a: Path, b: Path) -> bool:
    ra, rb = _rows(a), _rows(b)
    differ = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
    for k in differ:
        print(f"step {k[0]} {k[1]}/{k[2]}: {ra.get(k)} vs {rb.get(k)}")
    if not differ:
        print(f"identical ({len(ra)} rows)")
    return not differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    for p in (args.a, args.b):
        if not p.is_file():
            parser.error(f"{p}: no such file")
    same = compare_csvs(args.a, args.b) if args.a.suffix == ".csv" else compare_checkpoints(args.a, args.b)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
