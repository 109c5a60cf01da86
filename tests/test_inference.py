"""Using a trained model: load the artifact, predict (Python and CLI), evaluate, export."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

import stagewise
from conftest import make_image_folder, trained_run
from stagewise.cli import main
from stagewise.data.images import load_rgb
from stagewise.errors import DataError, StagewiseError, WeightsError
from stagewise.inference import evaluate, export

CLASSES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, data folder) of test_resnet trained one epoch on colour-coded classes."""
    return trained_run(tmp_path_factory.mktemp("inference"), CLASSES)


@pytest.fixture(scope="module")
def clf(trained: tuple[Path, Path]) -> stagewise.Classifier:
    return stagewise.load(trained[0])


def _val_images(data: Path) -> list[Path]:
    return sorted((data / "val").rglob("*.png"))


def _pipeline_layout(run: Path, tmp: Path) -> Path:
    """A pipeline run folder as `stagewise run` leaves it: stages/<name>/ plus final weights."""
    pipe = tmp / "pipe"
    shutil.copytree(run, pipe / "stages" / "s1")
    shutil.copy(run / "best.safetensors", pipe / "final.safetensors")
    meta = json.loads((run / "model.json").read_text())
    (pipe / "model.json").write_text(json.dumps({**meta, "weights": "final.safetensors"}))
    return pipe


def test_load_from_run_pipeline_and_weights_file(trained, clf, tmp_path):
    run, data = trained
    image = _val_images(data)[0]
    pipe = _pipeline_layout(run, tmp_path)
    for path in (run / "best.safetensors", pipe, run / "model.json"):
        other = stagewise.load(path)
        assert other.class_ids == list(CLASSES)
        assert other.preprocess == clf.preprocess
        x = clf.to_tensor(image)[None]
        torch.testing.assert_close(other.logits(x), clf.logits(x))
    assert stagewise.load(pipe).source == pipe / "final.safetensors"


def test_load_errors_name_the_fix(trained, tmp_path):
    run, data = trained
    with pytest.raises(WeightsError, match="no model.json"):
        stagewise.load(data)
    lonely = tmp_path / "lonely.safetensors"
    shutil.copy(run / "best.safetensors", lonely)
    with pytest.raises(WeightsError, match="no model.json beside the weights"):
        stagewise.load(lonely)
    unfinished = _pipeline_layout(run, tmp_path)
    (unfinished / "model.json").unlink()
    with pytest.raises(WeightsError, match=r"not finished.*stages/s1"):
        stagewise.load(unfinished)
    meta = json.loads((run / "model.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(run / "best.safetensors", broken / "best.safetensors")
    (broken / "model.json").write_text(json.dumps({**meta, "architecture": "resnet10t"}))
    with pytest.raises(WeightsError, match="does not fit resnet10t"):
        stagewise.load(broken)


def test_predict_accepts_path_pil_tensor_and_list(clf, trained):
    image = _val_images(trained[1])[0]
    by_path = clf.predict(image, top_k=2)
    assert by_path.source == str(image)
    assert [c.class_id for c in by_path.top_k][0] == by_path.class_id
    assert len(by_path.top_k) == 2 and by_path.top_k[0].probability >= by_path.top_k[1].probability
    others = [clf.predict(Image.open(image), top_k=2),
              clf.predict(clf.transform(load_rgb(image)), top_k=2),  # preprocessed float tensor
              clf.predict(pil_to_tensor(load_rgb(image)), top_k=2),  # raw uint8 pixels
              *clf.predict([str(image), Image.open(image)], top_k=2)]
    for pred in others:
        assert pred.class_id == by_path.class_id and pred.name == by_path.name
        assert pred.probability == pytest.approx(by_path.probability, abs=1e-6)
    assert clf.predict(image, top_k=10).top_k[-1].label in range(3)  # k capped at the class count


def test_predict_batches_and_embeds(clf, trained):
    images = _val_images(trained[1])
    preds = clf.predict(images, batch_size=4)
    assert [p.source for p in preds] == [str(p) for p in images]
    one_by_one = [clf.predict(p).probability for p in images[:3]]
    assert [p.probability for p in preds[:3]] == pytest.approx(one_by_one, abs=1e-6)
    feats = clf.embed(images, batch_size=5)
    assert feats.shape == (len(images), clf.model.num_features)
    torch.testing.assert_close(clf.embed(images[0]), feats[0])
    with pytest.raises(DataError, match="cannot read image"):
        clf.predict(trained[1] / "missing.png")


def test_flip_tta_sees_an_image_and_its_mirror_alike(clf, trained):
    x = clf.to_tensor(_val_images(trained[1])[0])
    mirrored = x.flip(2)  # (3, H, W): mirror the width
    plain, flipped = clf.predict(x), clf.predict(mirrored)
    with_tta = [clf.predict(x, tta="flip"), clf.predict(mirrored, tta="flip")]
    assert plain.probability != pytest.approx(flipped.probability, abs=1e-6)  # the model is not symmetric
    assert with_tta[0].probability == pytest.approx(with_tta[1].probability, abs=1e-6)
    with pytest.raises(DataError, match="unknown tta"):
        clf.predict(x, tta="rotate")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_predict_json_and_csv_carry_names_and_probabilities(trained, capsys):
    run, data = trained
    code, out, _ = _cli(capsys, "predict", run, data / "val", "--format", "json", "--top-k", "2",
                        "--num-workers", "0")
    assert code == 0
    doc = json.loads(out)
    rows = doc["predictions"]
    assert doc["failures"] == 0 and len(rows) == len(_val_images(data))
    assert {r["name"] for r in rows} <= set(CLASSES)
    assert all(0 < r["probability"] <= 1 and len(r["top_k"]) == 2 for r in rows)
    code, out, _ = _cli(capsys, "predict", run, str(data / "val" / "*" / "*_0.png"), "--format", "csv",
                        "--num-workers", "0")
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(table) == len(CLASSES)
    assert {"path", "class_id", "name", "probability", "class_id_3", "probability_3", "error"} <= set(table[0])
    assert all(float(r["probability"]) >= float(r["probability_2"]) for r in table)


def test_cli_predict_keeps_going_past_bad_files(trained, tmp_path, capsys):
    run, data = trained
    folder = tmp_path / "mixed"
    shutil.copytree(data / "val" / "beta", folder)
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    code, out, err = _cli(capsys, "predict", run, folder, tmp_path / "nothing-here.png",
                          "--format", "json", "--num-workers", "1", "--batch-size", "4")
    assert code == 0
    rows = {Path(r["path"]).name: r for r in json.loads(out)["predictions"]}
    assert rows["zero.png"]["error"] and rows["text.jpg"]["error"] and rows["nothing-here.png"]["error"]
    assert sum(r["error"] is None for r in rows.values()) == 6
    assert "3 of 9 input(s) could not be read" in err
    code, out, err = _cli(capsys, "predict", run, folder / "zero.png", folder / "text.jpg",
                          "--format", "csv")
    assert code == 2 and "none of the 2 input(s) could be read" in err
    assert all(r["error"] for r in csv.DictReader(io.StringIO(out)))


def test_evaluate_matches_predict_accuracy(trained, clf, tmp_path, capsys):
    run, data = trained
    out = tmp_path / "eval.json"
    code, _, _ = _cli(capsys, "evaluate", run, "--data", data, "--out", out, "--num-workers", "0")
    assert code == 0
    report = json.loads(out.read_text())
    preds = clf.predict(_val_images(data))
    accuracy = sum(p.class_id == Path(p.source).parent.name for p in preds) / len(preds)
    assert report["top1"] == pytest.approx(accuracy)
    assert report["images"] == len(preds) and report["top5"] == 1.0
    matrix = torch.tensor(report["confusion"]["matrix"])
    assert matrix.sum() == len(preds) and matrix.trace() / len(preds) == pytest.approx(accuracy)
    assert [r["support"] for r in report["per_class"]] == [6, 6, 6]
    assert 0.0 <= report["ece"] <= 1.0
    assert "| alpha |" in out.with_suffix(".md").read_text()


def test_evaluate_matches_classes_by_id(clf, tmp_path):
    # Folder order is alpha, gamma: index 1 would be 'beta' for the model if matched by position.
    subset = make_image_folder(tmp_path / "subset", classes=("gamma", "alpha"), per_class=3, seed=5)
    result = evaluate(clf, subset, num_workers=0)
    preds = clf.predict(sorted((subset / "val").rglob("*.png")))
    accuracy = sum(p.class_id == Path(p.source).parent.name for p in preds) / len(preds)
    assert result.top1 == pytest.approx(accuracy)
    supported = {r["class_id"]: r["support"] for r in result.per_class}
    assert supported["alpha"] == 3 and supported["gamma"] == 3 and supported.get("beta", 0) == 0


def test_evaluate_unknown_class_is_listed(clf, tmp_path):
    data = make_image_folder(tmp_path / "other", classes=("alpha", "delta", "zeta"), per_class=2)
    with pytest.raises(DataError, match=r"2 class\(es\) the model does not know: delta, zeta"):
        evaluate(clf, data, num_workers=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_torchscript_parity(clf, trained, tmp_path, capsys):
    run, data = trained
    target = tmp_path / "m.torchscript.pt"
    code, out, _ = _cli(capsys, "export", run, "--format", "torchscript", "--out", target)
    assert code == 0 and "parity: max |logit difference|" in out
    meta = json.loads(target.with_suffix(".preprocess.json").read_text())
    assert meta["class_ids"] == list(CLASSES) and meta["parity"]["checked"]
    assert meta["preprocess"]["image_size"] == clf.preprocess.image_size
    x = torch.stack([clf.to_tensor(p) for p in _val_images(data)[:3]])
    loaded = torch.jit.load(str(target))
    torch.testing.assert_close(loaded(x), clf.logits(x), atol=1e-4, rtol=0)


def test_export_onnx_parity_with_dynamic_batch(clf, trained, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (stagewise[onnx])")
    ort = pytest.importorskip("onnxruntime", reason="ONNX parity needs onnxruntime (stagewise[onnx])")
    result = export(clf, "onnx", tmp_path / "m.onnx", dynamic_batch=True)
    assert result.checked and result.max_abs_diff <= 1e-4
    x = torch.stack([clf.to_tensor(p) for p in _val_images(trained[1])[:5]])
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
    torch.testing.assert_close(got, clf.logits(x), atol=1e-4, rtol=0)
    fixed = export(clf, "onnx", tmp_path / "fixed.onnx")
    assert json.loads(fixed.preprocess_path.read_text())["input"]["shape"][0] == 1
    with pytest.raises(StagewiseError, match="exports opsets 9 to"):
        export(clf, "onnx", tmp_path / "bad.onnx", opset=99)


def test_export_onnx_without_runtime_says_unchecked(clf, tmp_path, monkeypatch):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (stagewise[onnx])")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    result = export(clf, "onnx", tmp_path / "m.onnx")
    assert not result.checked and result.max_abs_diff is None
    assert "NOT checked" in result.note and result.path.is_file()


def test_cli_errors_exit_2(trained, tmp_path, capsys):
    code, _, err = _cli(capsys, "predict", tmp_path, trained[1])
    assert code == 2 and "no model.json" in err
    with pytest.raises(StagewiseError, match="choose one of"):
        export(stagewise.load(trained[0]), "tflite", tmp_path / "x")


@pytest.mark.slow
def test_acceptance_hymenoptera_predict_equals_evaluate(hymenoptera, effnet_weights, tmp_path, capsys):
    result = stagewise.train(data=str(hymenoptera), model="tf_efficientnet_lite0",
                             weights=str(effnet_weights), strategy="probe", epochs=1, image_size=128,
                             batch_size=16, num_workers=0, augmentation="none", lr=0.05,
                             out=str(tmp_path / "run"), reporter="quiet")
    code, out, _ = _cli(capsys, "predict", result.run_dir, hymenoptera / "val", "--format", "json",
                        "--top-k", "2")
    assert code == 0
    rows = [r for r in json.loads(out)["predictions"] if r["error"] is None]
    assert all(r["name"] in ("ants", "bees") and 0 < r["probability"] <= 1 for r in rows)
    accuracy = sum(r["class_id"] == Path(r["path"]).parent.name for r in rows) / len(rows)
    code, _, _ = _cli(capsys, "evaluate", result.run_dir, "--data", hymenoptera,
                      "--out", tmp_path / "eval.json")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert code == 0 and report["images"] == len(rows)
    assert report["top1"] == pytest.approx(accuracy)
    assert accuracy > 0.7  # pretrained features make the two classes separable in one epoch
