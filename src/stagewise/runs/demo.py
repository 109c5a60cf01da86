"""The default job: generate the synthetic curriculum once, then run the 3-stage demo pipeline."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..defaults import DEMO_OUT
from .pipeline import PipelineResult, run
from .presets import load_preset


def cache_dir() -> Path:
    return Path(os.environ.get("STAGEWISE_CACHE", Path.home() / ".cache" / "stagewise")).expanduser()


def curriculum_data(seed: int = 0) -> Path:
    """The generated curriculum, made on first use (into a temp folder, then renamed into place)."""
    from ..data.synth import generate

    target = cache_dir() / f"curriculum-seed{seed}"
    if (target / ".complete").is_file():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    generate(tmp, "curriculum", seed)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def run_demo(
    out: Path = Path(DEMO_OUT),
    reporter: str = "rich",
    overrides: Sequence[str] = (),
    stages: list[str] | None = None,
) -> PipelineResult:
    """Run the demo pipeline (or `stages` of it) into `out`, resuming a previous demo run there."""
    data = curriculum_data()
    pipeline = load_preset("demo")
    resume = (Path(out) / "pipeline.json").exists()
    return run(pipeline, out, stages=stages, resume=resume, overrides=[f"data_root={data}", *overrides],
               reporter=reporter)
