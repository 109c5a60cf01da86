"""task: embed stages: metric learning on identities, measured on identities never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stagewise
from conftest import crash_then_resume, make_identity_folder, tiny_config
from stagewise.cli import main
from stagewise.data.loader import m_per_class_order
from stagewise.runfolder import read_split

pytest.importorskip("pytorch_metric_learning", reason="embed stages need stagewise[retrieval]")
pytest.importorskip("faiss", reason="embed stages need stagewise[retrieval]")


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_identity_folder(tmp_path_factory.mktemp("reid") / "ids", identities=40, views=5)


def embed_config(data: Path, out: Path, **kw) -> dict:
    return tiny_config(data, out, **{"task": "embed", "strategy": "scratch", "batch_size": 16,
                                     "lr": 3e-3, "val_fraction": 0.3, **kw})


def test_embed_stage_beats_its_pretrained_start_on_unseen_identities(identities: Path, tmp_path: Path):
    cfg = embed_config(identities, tmp_path / "run", metric_loss="supcon", m_per_class=4, epochs=15)
    result = stagewise.train(cfg, reporter="quiet")
    start, best = result.history[0], result.best
    assert start["epoch"] == 0 and "pretrained features" in start["event"]
    # The validation identities are not training classes: the loss never saw them.
    split = read_split(tmp_path / "run")
    trained = {Path(p).parts[0] for p in split["splits"]["train"]}
    validated = {Path(p).parts[0] for p in split["splits"]["val"]}
    assert trained and validated and not trained & validated
    assert best["val_map"] > start["val_map"] + 0.05
    assert best["val_recall1"] > start["val_recall1"]
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["task"] == "embed" and card["embedding"]["metric_loss"] == "supcon"
    assert card["metrics"]["val_map"] == pytest.approx(best["val_map"])
    assert not (tmp_path / "run" / "confusion.json").exists()


def test_epoch_metrics_equal_evaluate_retrieval_of_the_saved_model(identities: Path, tmp_path: Path):
    """An epoch's val_map is what `stagewise evaluate --retrieval` reports for those weights."""
    run = tmp_path / "run"
    result = stagewise.train(embed_config(identities, run, epochs=2), reporter="quiet")
    split = read_split(run)
    val = tmp_path / "val"
    for rel in split["splits"]["val"]:
        (val / rel).parent.mkdir(parents=True, exist_ok=True)
        (val / rel).symlink_to(identities / rel)
    ev = stagewise.load(run).meta  # model.json as loaded
    assert ev["task"] == "embed"
    from stagewise.inference import evaluate_retrieval

    measured = evaluate_retrieval(stagewise.load(run), val)
    assert measured.metrics["map"] == pytest.approx(result.best["val_map"], abs=1e-5)
    assert measured.metrics["recall"]["1"] == pytest.approx(result.best["val_recall1"], abs=1e-5)


def test_arcface_resume_is_bit_exact_including_the_class_centres(identities: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch):
    kw = dict(metric_loss="arcface", loss_args={"scale": 16.0}, epochs=3, checkpoint_every=2)
    straight = stagewise.train(embed_config(identities, tmp_path / "a", **kw), reporter="quiet")
    resumed = crash_then_resume(embed_config(identities, tmp_path / "b", **kw), monkeypatch)
    a, b = load_file(str(straight.weights)), load_file(str(resumed.weights))
    centres = [k for k in a if ".objective." in k]
    assert centres, "the ArcFace class centres are part of the saved weights"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r.get("val_map") for r in straight.history] == [r.get("val_map") for r in resumed.history]


def test_pair_loss_with_miner_trains_and_records_no_train_accuracy(identities: Path, tmp_path: Path):
    cfg = embed_config(identities, tmp_path / "run", metric_loss="triplet", m_per_class=4, epochs=1)
    result = stagewise.train(cfg, reporter="quiet")
    last = result.history[-1]
    assert "train_top1" not in last and last["train_loss"] >= 0  # no class scores for a pair loss
    assert last["val_map"] is not None


def test_probe_trains_only_the_embedding_head_on_cached_features(identities: Path, tmp_path: Path):
    base = stagewise.train(embed_config(identities, tmp_path / "base", epochs=1), reporter="quiet")
    probe = stagewise.train(embed_config(identities, tmp_path / "probe", epochs=2, strategy="probe",
                                         weights=str(base.weights)), reporter="quiet")
    before, after = load_file(str(base.weights)), load_file(str(probe.weights))
    body = [k for k in after if not k.startswith("fc.")]
    assert body and all(torch.equal(before[k], after[k]) for k in body if "running" not in k)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("fc.proj."))
    assert probe.history[-1]["trainable_params"] < probe.history[-1]["total_params"]


def run_pipeline(tmp_path: Path, stages: list[dict]) -> Path:
    """Run a pipeline of tiny stages; returns its stages/ folder."""
    common = {"model": "test_resnet", "image_size": 32, "batch_size": 16, "num_workers": 0,
              "report": False, "val_fraction": 0.3}
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(json.dumps({"defaults": common, "stages": stages}))
    assert main(["run", str(pipeline), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    return tmp_path / "runs" / "stages"


def test_classify_then_embed_pipeline_hands_over_the_backbone(identities: Path, tmp_path: Path):
    stages = run_pipeline(tmp_path, [
        {"name": "classify", "data": str(identities), "strategy": "scratch", "epochs": 1},
        {"name": "embed", "data": str(identities), "task": "embed", "strategy": "probe",
         "metric_loss": "arcface", "epochs": 1},
    ])
    first = load_file(str(stages / "classify" / "best.safetensors"))
    second = load_file(str(stages / "embed" / "best.safetensors"))
    card = json.loads((stages / "embed" / "model.json").read_text())
    assert card["task"] == "embed" and "new" in card["head"]["embedding"]
    history = [json.loads(x) for x in (stages / "embed" / "history.jsonl").read_text().splitlines()]
    assert history[0]["epoch"] == 0 and history[-1]["val_map"] is not None
    # The probe kept the classifier's backbone as it was handed over; the class rows stayed behind.
    body = [k for k in second if not k.startswith("fc.")]
    assert body and all(torch.equal(first[k], second[k]) for k in body)
    assert "fc.weight" in first and "fc.weight" not in second


@pytest.mark.parametrize("overrides, needle", [
    ({"loss_args": {"marginn": 1}}, "valid: margin, scale"),
    ({"monitor": "val_top1"}, "val_map"),
    ({"mixup": 0.2}, "mixup"),
    ({"metric_loss": "arcface", "miner": "batch_hard"}, "miner"),
    ({"m_per_class": 3}, "m_per_class"),
])
def test_bad_embed_settings_exit_2_before_any_folder(identities: Path, tmp_path: Path, capsys,
                                                     overrides: dict, needle: str):
    args = ["train", "--data", str(identities), "--model", "test_resnet", "--out", str(tmp_path / "r"),
            "--set", "task=embed"]
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_identity_folders_need_a_validation_identity_with_two_images(tmp_path: Path, capsys):
    root = make_identity_folder(tmp_path / "ids", identities=3, views=1)
    args = ["train", "--data", str(root), "--model", "test_resnet", "--out", str(tmp_path / "r"),
            "--set", "task=embed"]
    assert main(args) == 2
    assert "2 or more images" in capsys.readouterr().err


def test_m_per_class_order_groups_runs_of_one_identity():
    labels = [0] * 5 + [1] * 2 + [2] * 8
    order = m_per_class_order(labels, 4, seed=3)
    runs = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert all(len({labels[i] for i in run}) == 1 for run in runs)
    assert set(order) == set(range(len(labels)))  # every image at least once per epoch
    assert order == m_per_class_order(labels, 4, seed=3)
    assert order != m_per_class_order(labels, 4, seed=4)
    assert len(order) == len(m_per_class_order(labels, 4, seed=4))


def test_report_shows_retrieval_curves_and_query_grid(identities: Path, tmp_path: Path):
    run = tmp_path / "run"
    stagewise.train(embed_config(identities, run, epochs=1, report=True), reporter="quiet")
    text = (run / "report.md").read_text()
    assert "## Retrieval" in text and "## Retrieval examples" in text
    assert "could not be made" not in text and "Confusion matrix" not in text
    assert (run / "plots" / "retrieval.png").stat().st_size > 0
    assert (run / "plots" / "retrieval-examples.png").stat().st_size > 0


def test_compare_classifier_features_against_metric_learned_ones(tmp_path: Path, capsys):
    """`task` as a grid axis: both cells train on the same identities and search others."""
    train = make_identity_folder(tmp_path / "train_ids", identities=16, views=5)
    held = make_identity_folder(tmp_path / "held_ids", identities=6, views=4, seed=1)
    args = ["compare", "--data", str(train), "--models", "test_resnet", "--strategies", "scratch",
            "--tasks", "classify,embed", "--epochs", "1", "--out", str(tmp_path / "cmp"),
            "--set", "image_size=32", "--set", "batch_size=16", "--set", "num_workers=0"]
    assert main(args) == 2
    assert "--retrieval-data" in capsys.readouterr().err
    assert main([*args, "--retrieval-data", str(held)]) == 0
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["cells"]
    assert [r["task"] for r in rows] == ["classify", "embed"]
    assert all(0.0 <= r["retrieval_map"] <= 1.0 and r["retrieval_recall1"] is not None for r in rows)
    assert rows[0]["val_top1"] is not None and rows[1]["val_map"] is not None
    assert "search mAP" in (tmp_path / "cmp" / "compare.md").read_text()


def test_embed_then_classify_hands_the_backbone_back(identities: Path, tmp_path: Path):
    stages = run_pipeline(tmp_path, [
        {"name": "embed", "data": str(identities), "task": "embed", "strategy": "scratch",
         "metric_loss": "arcface", "epochs": 1},
        {"name": "classify", "data": str(identities), "strategy": "probe", "epochs": 1},
    ])
    first = load_file(str(stages / "embed" / "best.safetensors"))
    second = load_file(str(stages / "classify" / "best.safetensors"))
    body = [k for k in second if not k.startswith("fc.")]
    assert body and all(torch.equal(first[k], second[k]) for k in body)
    card = json.loads((stages / "classify" / "model.json").read_text())
    assert card["task"] == "classify" and card["head"]["mode"] == "reset"
    assert "fc.weight" in second and not any(".objective." in k for k in second)
