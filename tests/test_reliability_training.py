"""Issue #22, training side: each test is a defect an adversarial pass found, kept fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stagewise
from conftest import Crash, make_image_folder, tiny_config


def _same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert set(ta) == set(tb)
    assert not [k for k in ta if not torch.equal(ta[k], tb[k])]


# ---- 1. a step checkpoint at the epoch's last batch, then a kill in its validation ----

def test_checkpoint_at_last_batch_then_crash_in_validation_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 images, batch 16: 4 batches, so checkpoint_every 2 saves at the epoch's last batch.
    A crash during that epoch's validation must resume (it skipped 64 > 60 images) to the
    weights of a run that never stopped."""
    import stagewise.training.stage as stage

    data = make_image_folder(tmp_path / "data", per_class=20)
    cfg = dict(epochs=2, batch_size=16, checkpoint_every=2)
    straight = stagewise.train(tiny_config(data, tmp_path / "straight", **cfg), reporter="quiet")
    real_checkpoint, real_validate = stage._checkpoint, stage._validate
    saved: list[tuple[int, int]] = []

    def remember(setup, where) -> None:
        real_checkpoint(setup, where)
        saved.append((where.epoch, where.batches_done))

    def crash_after_last_batch_checkpoint(setup, rep):
        if saved and saved[-1] == (0, 4):
            raise Crash
        return real_validate(setup, rep)

    crashed = tiny_config(data, tmp_path / "crashed", **cfg)
    with monkeypatch.context() as patched:
        patched.setattr(stage, "_checkpoint", remember)
        patched.setattr(stage, "_validate", crash_after_last_batch_checkpoint)
        with pytest.raises(Crash):
            stagewise.train(crashed, reporter="quiet")
    resumed = stagewise.train(resume=True, reporter="quiet", out=crashed["out"])
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    _same_weights(straight.run_dir / "last" / "model.safetensors",
                  resumed.run_dir / "last" / "model.safetensors")
    _same_weights(straight.weights, resumed.weights)
