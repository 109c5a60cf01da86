"""`export --format hf`, `push` and `stagewise.load("hf-hub:...")`: the folder timm loads with its
own loader and data config, the upload call, and loading back through huggingface_hub's cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import stagewise
from conftest import trained_run
from stagewise.cli import main
from stagewise.inference.hub import FILES

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, data folder) of test_resnet trained one epoch at 32 px."""
    return trained_run(tmp_path_factory.mktemp("hub"), CLASSES)


@pytest.fixture(scope="module")
def exported(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "pets-hf"
    assert main(["export", str(trained[0]), "--format", "hf", "--out", str(out)]) == 0
    return out


def test_timm_loads_the_export_with_stagewise_predictions(trained, exported, capsys):
    """The acceptance test: timm's own loader and data config give stagewise's label and
    probabilities (within 1e-3) on real image files."""
    import timm
    from PIL import Image

    run, data = trained
    images = sorted((data / "val").rglob("*.png"))
    capsys.readouterr()
    assert main(["predict", str(run), *map(str, images), "--format", "json", "--top-k", "3",
                 "--device", "cpu", "--quiet"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)["predictions"]}

    model = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    config = json.loads((exported / "config.json").read_text())
    assert model.num_classes == config["num_classes"] == len(CLASSES)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    for path in images:
        with torch.no_grad():
            probs = model(transform(Image.open(path).convert("RGB")).unsqueeze(0)).softmax(-1)[0]
        row = rows[path.name]
        assert config["label_names"][int(probs.argmax())] == row["name"]
        for cand in row["top_k"]:
            assert abs(float(probs[cand["label"]]) - cand["probability"]) < 1e-3


def test_export_folder_layout_and_card(trained, exported):
    from huggingface_hub import ModelCard

    run, _ = trained
    assert sorted(p.name for p in exported.iterdir()) == sorted(FILES)
    published = json.loads((exported / "model.json").read_text())
    assert published["data"] == "data" and published["weights"] == "model.safetensors"  # no local paths
    config = json.loads((exported / "config.json").read_text())
    pre = config["pretrained_cfg"]
    assert config["architecture"] == "test_resnet"
    assert config["label_names"] == sorted(CLASSES)  # the classes in the head's order
    assert pre["input_size"] == [3, 32, 32] and pre["crop_mode"] == "center"
    meta = json.loads((run / "model.json").read_text())
    assert pre["mean"] == meta["preprocess"]["mean"] and pre["crop_pct"] == meta["preprocess"]["crop_pct"]

    card = ModelCard.load(exported / "README.md")
    assert card.data.library_name == "timm" and "stagewise" in card.data.tags
    assert card.data.datasets == ["data"]
    top1 = card.data.eval_results[0]
    assert top1.metric_type == "accuracy" and top1.metric_value == pytest.approx(meta["metrics"]["val_top1"])
    for section in ("## Training recipe", "## Metrics", "## Intended use and limitations", "## How to load"):
        assert section in card.text
    assert "| strategy | scratch |" in card.text


def test_export_refuses_what_timm_cannot_build(trained, tmp_path, capsys):
    from stagewise.inference import ExportError
    from stagewise.inference.hf_export import refuse_unsupported

    for meta, says in (({"architecture": "tv:resnet18"}, "torchvision"),
                       ({"architecture": "resnet18", "head_layers": [64]}, "MLP head"),
                       ({"architecture": "resnet18", "task": "embed"}, "embedding model")):
        with pytest.raises(ExportError, match=says):
            refuse_unsupported(meta)
    busy = tmp_path / "mine"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert main(["export", str(trained[0]), "--format", "hf", "--out", str(busy)]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "keep me"


def test_stagewise_loads_the_export_from_a_folder_and_the_hub_cache(trained, exported, tmp_path,
                                                                      monkeypatch):
    import huggingface_hub.constants as hf_constants

    run, data = trained
    image = sorted((data / "val").rglob("*.png"))[0]
    want = stagewise.load(run, device="cpu").predict(image, top_k=3)

    # A fake huggingface_hub cache, offline: what a download of hf-hub:me/pets leaves behind.
    cache = tmp_path / "hub-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--me--pets"
    shutil.copytree(exported, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))

    timm_only = tmp_path / "timm-only"  # a timm folder without stagewise's model.json
    shutil.copytree(exported, timm_only)
    (timm_only / "model.json").unlink()
    for source in (exported, "hf-hub:me/pets", timm_only):
        got = stagewise.load(source, device="cpu").predict(image, top_k=3)
        assert got.name == want.name
        assert got.probability == pytest.approx(want.probability, abs=1e-5)
    with pytest.raises(stagewise.StagewiseError, match="not in the local Hugging Face cache"):
        stagewise.load("hf-hub:me/never-downloaded")


class _FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls, keeps what would be uploaded."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token: str | None = None, **kwargs: object) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs: object):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs: object):
        folder = Path(str(kwargs["folder_path"]))
        uploaded = {p.name: p.read_bytes() for p in folder.iterdir()
                    if p.name in kwargs["allow_patterns"]}  # type: ignore[operator]
        self.calls.append(("upload_folder", {**kwargs, "uploaded": uploaded}))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/1"})()


def test_push_dry_run_then_upload(trained, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    run, _ = trained
    _FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    out = tmp_path / "to-push"
    for _ in range(2):  # the second push replaces the first one's export
        assert main(["push", str(run), "me/pets", "--dry-run", "--out", str(out), "--license", "mit"]) == 0
    shown = capsys.readouterr().out
    assert "would upload to me/pets" in shown
    assert all(name in shown for name in FILES)
    assert _FakeHfApi.calls == []  # a dry run makes no client at all
    assert "license: mit" in (out / "README.md").read_text()
    assert "hf-hub:me/pets" in (out / "README.md").read_text()  # the card's load snippet

    assert main(["push", str(out), "me/pets", "--private"]) == 0
    kinds = [kind for kind, _ in _FakeHfApi.calls]
    assert kinds == ["init", "create_repo", "upload_folder"]
    assert _FakeHfApi.calls[0][1]["token"] == "hf_test_token"
    assert _FakeHfApi.calls[1][1]["repo_id"] == "me/pets" and _FakeHfApi.calls[1][1]["private"] is True
    upload = _FakeHfApi.calls[2][1]
    assert upload["repo_id"] == "me/pets"
    assert sorted(upload["uploaded"]) == sorted(FILES)
    assert upload["uploaded"]["config.json"] == (out / "config.json").read_bytes()
    assert "commit: https://huggingface.co/me/pets/commit/1" in capsys.readouterr().out


def test_push_refuses_a_bad_repo_id_before_exporting(trained, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["push", str(trained[0]), "not a repo!", "--out", str(out)]) == 2
    assert "repo id 'not a repo!'" in capsys.readouterr().err
    assert not out.exists()


def test_a_pipeline_export_card_has_its_stage_history(trained, tmp_path):
    """A pipeline run folder (as `stagewise run` leaves it) exports its final model, and the card
    tells the stages apart: a recipe column and a history row per stage."""
    from stagewise.runfolder import write_manifest

    run, _ = trained
    pipe = tmp_path / "pipe"
    for stage in ("probe", "finetune"):
        shutil.copytree(run, pipe / "stages" / stage)
    shutil.copy(run / "best.safetensors", pipe / "final.safetensors")
    meta = json.loads((run / "model.json").read_text())
    (pipe / "model.json").write_text(json.dumps({**meta, "weights": "final.safetensors",
                                                 "stage": "finetune"}))
    entry = {"status": "done", "epochs_run": 1, "best_epoch": 1, "score": "val_top1", "best_score": 0.75}
    write_manifest(pipe, {"format": "stagewise.pipeline/1", "name": "pipe", "pipeline": {},
                          "overrides": [], "order": ["probe", "finetune"],
                          "stages": {"probe": entry, "finetune": {**entry, "best_score": 0.9}}})
    assert main(["export", str(pipe), "--format", "hf"]) == 0
    text = (pipe / "hf" / "README.md").read_text()
    assert "2-stage pipeline (probe → finetune)" in text
    assert "| key | probe | finetune |" in text
    assert "| probe | done | 1 | 1 | val_top1 | 0.7500 |" in text
    assert "| finetune | done | 1 | 1 | val_top1 | 0.9000 |" in text
    assert "At the best epoch (stage `finetune`)" in text


def test_the_card_names_the_hub_model_it_started_from():
    from stagewise.inference.hf_card import _base_model

    assert _base_model([("s", {"model": "resnet18", "weights": "hub"})]) == "timm/resnet18.a1_in1k"
    assert _base_model([("s", {"model": "x", "weights": "hf-hub:me/base@v2"})]) == "me/base"
    assert _base_model([("s", {"model": "resnet18", "weights": "r18.safetensors"})]) is None
    assert _base_model([("s", {"model": "resnet18", "weights": None})]) is None
