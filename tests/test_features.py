"""cache: features: a probe trains its head on backbone features computed once, with the same
result as running the frozen backbone every epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stagewise
from conftest import crash_then_resume, make_image_folder, tiny_config
from stagewise.errors import ConfigError

PROBE = dict(strategy="probe", augmentation="none", epochs=3, batch_size=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("features") / "data", per_class=8)


def _weights(run: Path, name: str = "last/model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / name))


def test_cached_features_train_the_same_probe(data: Path, tmp_path: Path) -> None:
    images = stagewise.train(tiny_config(data, tmp_path / "images", cache="none", **PROBE), reporter="quiet")
    cached = stagewise.train(tiny_config(data, tmp_path / "cached", cache="features", **PROBE), reporter="quiet")
    a, b = _weights(images.run_dir), _weights(cached.run_dir)
    assert a.keys() == b.keys()  # the whole network is saved, not the head alone
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    for x, y in zip(images.history, cached.history, strict=True):
        assert y["val_top1"] == x["val_top1"] and y["val_images"] == x["val_images"]
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
    # The saved model is a normal artifact: it loads and predicts like the image-trained one.
    files = sorted(str(p) for p in (data / "val").rglob("*.png"))[:4]
    pa = stagewise.load(images.run_dir).predict(files)
    pb = stagewise.load(cached.run_dir).predict(files)
    assert [p.label for p in pa] == [p.label for p in pb]


def test_auto_uses_features_only_where_exact(data: Path, tmp_path: Path, capsys) -> None:
    stagewise.train(tiny_config(data, tmp_path / "auto", **{**PROBE, "epochs": 1}), reporter="json")
    assert "cache: features (auto" in capsys.readouterr().out
    stagewise.train(tiny_config(data, tmp_path / "aug", **{**PROBE, "epochs": 1, "augmentation": "light"}),
                    reporter="json")
    assert "cache: none (auto" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="cache: features: strategy 'finetune' trains the backbone"):
        stagewise.train(tiny_config(data, tmp_path / "ft", cache="features", strategy="finetune"),
                        reporter="quiet")


def test_cached_feature_probe_resumes_exactly(data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = dict(PROBE, cache="features", checkpoint_every=2)
    straight = stagewise.train(tiny_config(data, tmp_path / "straight", **cfg), reporter="quiet")
    resumed = crash_then_resume(tiny_config(data, tmp_path / "crashed", **cfg), monkeypatch)
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_augmented_views_cycle_by_epoch(data: Path, tmp_path: Path) -> None:
    cfg = dict(PROBE, cache="features", augmentation="light", feature_views=2, epochs=4)
    result = stagewise.train(tiny_config(data, tmp_path / "views", **cfg), reporter="quiet")
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert all(r["trainable_params"] < r["total_params"] for r in result.history)


def test_progressive_resize_grows_the_training_size_and_resumes_on_it(data: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    from stagewise.data.resize import size_schedule

    assert size_schedule(224, 8, 0.5, 0.75) == [128, 128, 160, 160, 192, 192, 224, 224]
    assert size_schedule(32, 4, 0.5, 0.5) == [16, 24, 32, 32]
    cfg = dict(strategy="scratch", epochs=4, batch_size=8, progressive_resize={"start": 0.5, "finish": 0.5})
    straight = stagewise.train(tiny_config(data, tmp_path / "straight", **cfg), reporter="quiet")
    assert [r["image_size"] for r in straight.history] == [16, 24, 32, 32]
    assert all(r["val_images"] == 24 for r in straight.history)  # validation at the full size

    resumed = crash_then_resume(tiny_config(data, tmp_path / "crashed", **cfg), monkeypatch,
                                mid_epoch=False)
    assert [r["image_size"] for r in resumed.history] == [16, 24, 32, 32]
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_feature_extraction_counts_in_the_first_epochs_wall_time(data: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    """A probe's time in compare and pipeline verdicts is its whole cost: the one-off
    extraction lands in the first epoch's wall_seconds (an hour here, stated by the patch)."""
    import stagewise.training.setup as setup

    real = setup._use_features
    monkeypatch.setattr(setup, "_use_features", lambda *a: real(*a) + 3600.0)
    run = stagewise.train(tiny_config(data, tmp_path / "run", cache="features", **PROBE), reporter="quiet")
    first, *rest = run.history
    assert first["wall_seconds"] >= 3600.0 > first["epoch_seconds"]
    assert all(r["wall_seconds"] < 3600.0 for r in rest)
