"""Regenerate every number and picture in the README from the current code.

    python benchmarks/readme_figures.py --out /tmp/readme            # demo + hymenoptera compare
    python benchmarks/readme_figures.py --out /tmp/readme --skip-compare

Runs the two commands the README quotes (`stagewise run`, the built-in demo; `stagewise compare`
on the ants/bees photos with the Lite0 ImageNet weights, when ../shared holds them), prints the
README's tables in markdown, and copies the pictures into docs/images/. Reuses finished runs in
`--out` (both commands resume), so a second call only reprints.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGES = ROOT / "docs" / "images"


def _stagewise(*args: str) -> None:
    print("$ stagewise " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "stagewise", *args, "--quiet"], check=True)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _pts(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.1f} pts"


def demo(out: Path) -> None:
    _stagewise("run", "--out", str(out))
    manifest = json.loads((out / "pipeline.json").read_text())
    print("\n| stage | classes | best val top-1 | head rows kept | scratch baseline | gain | pays in time? |")
    print("| --- | ---: | ---: | --- | ---: | ---: | --- |")
    for name, s in manifest["stages"].items():
        base, gain, head = s.get("baseline") or {}, s.get("gain") or {}, s.get("head") or {}
        kept = f"{head['kept']}/{s['classes']}" if head.get("kept") is not None and s.get("parent") else "-"
        verdict = "-"
        if gain:
            verdict = (f"yes ({gain['time_to_baseline_best_s']:.0f} s vs {gain['baseline_best_s']:.0f} s)"
                       if gain.get("pays") else
                       f"no ({gain.get('time_to_baseline_best_s') or float('nan'):.0f} s vs "
                       f"{gain.get('baseline_best_s') or float('nan'):.0f} s)")
        print(f"| {name} | {s['classes']} | {_pct(s.get('best_val_top1'))} | {kept} | "
              f"{_pct(base.get('best_val_top1')) if base else '-'} | "
              f"{_pts(gain.get('best'))} | {verdict} |")
    shutil.copyfile(out / "plots" / "curves.png", IMAGES / "demo_curves.png")
    print(f"\ncopied {out / 'plots' / 'curves.png'} -> docs/images/demo_curves.png")


def compare(out: Path) -> None:
    data, weights = SHARED / "data" / "hymenoptera", SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
    if not data.is_dir() or not weights.is_file():
        print(f"skipping the compare table: {data} or {weights} is missing")
        return
    _stagewise("compare", "--data", str(data), "--models", "tf_efficientnet_lite0",
               "--strategies", "scratch,probe,finetune", "--epochs", "3", "--image-size", "160",
               "--weights", str(weights), "--out", str(out))
    rows = json.loads((out / "compare.json").read_text())["cells"]
    print("\n| strategy | train acc | val acc | wall time | trainable params |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['strategy']} | {_pct(r.get('train_top1'))} | {_pct(r.get('val_top1'))} | "
              f"{r['seconds']:.0f} s | {r.get('trainable_params') or 0:,} |")
    shutil.copyfile(out / "plots" / "compare.png", IMAGES / "compare_hymenoptera.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs (reused when run again)")
    ap.add_argument("--skip-compare", action="store_true", help="only the demo")
    args = ap.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    demo(args.out / "demo")
    if not args.skip_compare:
        compare(args.out / "cmp")


if __name__ == "__main__":
    main()
