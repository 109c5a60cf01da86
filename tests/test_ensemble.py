"""Ensembles of runs (mean softmax, classes matched by id), multi-view TTA, and the interpretation
of an evaluation (most-confused pairs, top losses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.errors import ConfigError, DataError
from stagewise.inference import Classifier, Ensemble, evaluate
from stagewise.inference.interpret import most_confused
from stagewise.inference.views import ViewTransform, parse_tta

CLASSES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(run at 32 px, run at 40 px, data): test_resnet, one epoch each."""
    root = tmp_path_factory.mktemp("ensemble")
    data = make_image_folder(root / "data", classes=CLASSES, per_class=4)
    a = stagewise.train(tiny_config(data, root / "a", epochs=1, augmentation="none"), reporter="quiet")
    b = stagewise.train(tiny_config(data, root / "b", epochs=1, augmentation="none", image_size=40,
                                    seed=1), reporter="quiet")
    return a.run_dir, b.run_dir, data


class _Permuted(nn.Module):
    """A network whose output columns come in another order (a model trained with another class order)."""

    def __init__(self, net: nn.Module, order: list[int]) -> None:
        super().__init__()
        self.net, self.order = net, order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, self.order]


def _reordered(clf: Classifier, order: list[int]) -> Classifier:
    return Classifier(_Permuted(clf.model, order), [clf.class_ids[i] for i in order],
                      [clf.class_names[i] for i in order], clf.preprocess, source=Path("reordered"))


def _images(data: Path) -> list[Path]:
    return sorted((data / "val").rglob("*.png"))


def test_ensemble_probabilities_are_the_mean_of_members_with_columns_matched_by_id(runs):
    a, b = stagewise.load(runs[0]), stagewise.load(runs[1])
    assert a.preprocess.image_size == 32 and b.preprocess.image_size == 40
    b_reordered = _reordered(b, [2, 0, 1])
    images = _images(runs[2])
    ens = Ensemble([a, b_reordered])
    assert ens.class_ids == a.class_ids
    expected = (torch.stack([a.transform(Image.open(p).convert("RGB")) for p in images]),
                torch.stack([b.transform(Image.open(p).convert("RGB")) for p in images]))
    mean = (a.probabilities(expected[0]) + b.probabilities(expected[1])) / 2
    packed = torch.stack([ens.input_transform()(Image.open(p).convert("RGB")) for p in images])
    assert torch.allclose(ens.probabilities(packed), mean, atol=1e-6)
    preds = ens.predict(images, top_k=3)
    for pred, row in zip(preds, mean, strict=True):
        assert pred.class_id == a.class_ids[int(row.argmax())]
        assert pred.probability == pytest.approx(float(row.max()), abs=1e-6)


def test_ensemble_rejects_members_with_other_class_ids(runs):
    a = stagewise.load(runs[0])
    other = Classifier(a.model, ["alpha", "beta", "delta"], ["alpha", "beta", "delta"], a.preprocess)
    with pytest.raises(ConfigError, match="missing gamma; extra delta"):
        Ensemble([a, other])


def test_tta_modes_count_views_and_average_their_probabilities(runs):
    clf = stagewise.load(runs[0])
    img = Image.open(_images(runs[2])[0]).convert("RGB")
    for tta, views in (("five_crop", 5), ("ten_crop", 10), ("scales=0.875,1.0,1.15", 3)):
        x = ViewTransform(clf.preprocess, parse_tta(tta))(img)
        assert x.shape == (views, 3, 32, 32)
        assert clf.input_shape(tta) == (views, 3, 32, 32)
        by_view = clf.probabilities(x)  # each view as its own image
        assert torch.allclose(clf.probabilities(x[None], tta)[0], by_view.mean(dim=0), atol=1e-6)
        assert clf.predict(img, tta=tta).probability == pytest.approx(float(by_view.mean(0).max()), abs=1e-6)
    # flip keeps averaging the logits of the image and its mirror
    t = clf.transform(img)[None]
    flipped = (clf.logits(t) + clf.logits(t.flip(3))) / 2
    assert torch.allclose(clf.probabilities(t, "flip"), flipped.softmax(dim=1), atol=1e-6)
    with pytest.raises(DataError, match="unknown tta"):
        parse_tta("rotate")
    with pytest.raises(DataError, match="scales"):
        parse_tta("scales=x")


def test_most_confused_pairs_from_a_known_matrix():
    matrix = [[5, 3, 0],
              [1, 4, 7],
              [2, 0, 9]]
    pairs = most_confused(matrix, ["a", "b", "c"], k=3)
    assert pairs == [{"true": "b", "predicted": "c", "count": 7},
                     {"true": "a", "predicted": "b", "count": 3},
                     {"true": "c", "predicted": "a", "count": 2}]
    assert most_confused([[3, 0], [0, 2]], ["a", "b"]) == []


def test_evaluate_an_ensemble_reports_members_confusions_and_top_losses(runs, tmp_path):
    ens = Ensemble([stagewise.load(runs[0]), stagewise.load(runs[1])])
    ev = evaluate(ens, runs[2], "val", batch_size=5, num_workers=0, tta="five_crop")
    assert [m["model"] for m in ev.members] == ens.sources
    assert all(0 <= m["top1"] <= 1 for m in ev.members)
    assert len(ev.top_losses) == min(9, ev.images) == len(ev.thumbnails)
    losses = [t["loss"] for t in ev.top_losses]
    assert losses == sorted(losses, reverse=True)
    assert all(Path(t["source"]).is_file() for t in ev.top_losses)
    out, report = ev.write(tmp_path / "ev.json")
    saved = json.loads(out.read_text())
    assert "thumbnails" not in saved and saved["tta"] == "five_crop" and len(saved["members"]) == 2
    assert (tmp_path / "ev-top-losses.png").is_file()
    assert "ensemble (mean probability)" in report.read_text()


def test_cli_predict_and_evaluate_with_two_runs(runs, tmp_path, capsys):
    a, b, data = runs
    assert main(["predict", str(a), str(b), str(data / "val"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert str(a) in out["model"] and str(b) in out["model"]
    assert len(out["predictions"]) == len(_images(data)) and out["failures"] == 0
    assert main(["predict", "--model", str(a), "--model", str(b), str(data / "val"), "--format", "csv",
                 "--tta", "scales=1.0,1.15"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(_images(data)) + 1
    target = tmp_path / "eval.json"
    assert main(["evaluate", str(a), str(b), "--data", str(data), "--out", str(target),
                 "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble (mean probability)" in printed and "top-losses" in printed
    saved = json.loads(target.read_text())
    assert len(saved["members"]) == 2 and "most_confused" in saved
