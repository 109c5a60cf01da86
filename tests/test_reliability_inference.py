"""Issue #22, inference and retrieval: defects an adversarial pass found, one regression test each.

Bad input exits 2 with a message naming the file, key or value and the fix; nothing a run folder
already holds is replaced. Runs are tiny (test_resnet at 32 px, one epoch) and shared per module.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import stagewise
from conftest import make_identity_folder, make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.errors import ConfigError, DataError, WeightsError

pytest.importorskip("pytorch_metric_learning", reason="embed runs need stagewise[retrieval]")
pytest.importorskip("faiss", reason="retrieval needs stagewise[retrieval]")

CLASSES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classification run, an embed run, their data, and an identity folder."""
    root = tmp_path_factory.mktemp("reliability")
    data = make_image_folder(root / "data", classes=CLASSES, per_class=4)
    ids = make_identity_folder(root / "ids", identities=6, views=4)
    cls = stagewise.train(tiny_config(data, root / "cls", epochs=1, augmentation="none"),
                          reporter="quiet").run_dir
    emb = stagewise.train(tiny_config(ids, root / "emb", epochs=1, augmentation="none", task="embed",
                                      strategy="scratch", val_fraction=0.3), reporter="quiet").run_dir
    return {"cls": cls, "emb": emb, "data": data, "ids": ids, "root": root}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _embed_run_with_classes(runs: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the embed run whose model.json lists the classification run's class ids: the
    case where nothing but the task tells them apart."""
    run = tmp_path / "emb"
    shutil.copytree(runs["emb"], run)
    card = json.loads((run / "model.json").read_text())
    card.update(class_ids=list(CLASSES), class_names=list(CLASSES), num_classes=len(CLASSES))
    (run / "model.json").write_text(json.dumps(card))
    return run


# ---- item 3: outputs never land on a run's own files ----

def test_outputs_never_replace_a_runs_own_files(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["cls"], run)
    before = _digests(run)
    cases = [["index", run, runs["ids"], "--out", run / "model"],  # its sidecar: run/model.json
             ["embed", run, runs["ids"], "--out", run / "best.safetensors"],
             ["evaluate", run, "--data", runs["data"], "--out", run / "model.json"],
             ["evaluate", run, "--data", runs["data"], "--out", run / "history.jsonl"],
             ["export", run, "--format", "torchscript", "--out", run / "best.safetensors"]]
    for args in cases:
        code, err = _run(args, capsys)
        assert code == 2, args
        assert "a file of the run folder" in err and "write elsewhere" in err, err
    assert _digests(run) == before
    stagewise.load(run)  # still loads
    from stagewise.inference.retrieval import Embeddings

    emb = Embeddings(torch.zeros(1, 4).numpy(), ["a.png"], [None], "m")
    with pytest.raises(ConfigError, match="model.json, a file of the run folder"):
        emb.save(run / "model.json")
    assert _run(["embed", run, runs["ids"], "--out", run / "emb.npz", "--quiet"], capsys)[0] == 0


# ---- item 5: an embed run cannot teach ----

def test_embed_run_is_refused_as_a_teacher(runs, tmp_path, capsys):
    code, err = _run(["train", "--data", runs["data"], "--model", "test_resnet", "--image-size", "32",
                      "--epochs", "1", "--num-workers", "0", "--teacher", runs["emb"],
                      "--out", tmp_path / "student", "--quiet"], capsys)
    assert code == 2 and "embed run (task: embed)" in err and "classification run" in err
    assert not (tmp_path / "student").exists()
    from stagewise.runs.plan import load_pipeline

    with pytest.raises(ConfigError, match=r"stages\[1\] \(b\)\.teacher: stage 'a' is an embed run"):
        load_pipeline({"stages": [{"name": "a", "data": str(runs["ids"]), "task": "embed"},
                                  {"name": "b", "data": str(runs["data"]), "teacher": "a"}]})
    with pytest.raises(ConfigError, match=r"teacher: '.*emb' is an embed run"):
        load_pipeline({"stages": [{"name": "b", "data": str(runs["data"]), "teacher": str(runs["emb"])}]})


# ---- items 6 and 16: an embed run gives no class probabilities, with any TTA ----

def test_embed_run_never_joins_a_classification_ensemble(runs, tmp_path, capsys):
    emb = _embed_run_with_classes(runs, tmp_path)
    images = runs["data"] / "val"
    for tta in ("five_crop", "flip"):
        code, err = _run(["predict", runs["cls"], emb, images, "--tta", tta], capsys)
        assert code == 2 and "is an embed run" in err and "leave it out" in err, err
        code, err = _run(["evaluate", runs["cls"], emb, "--data", runs["data"], "--tta", tta,
                          "--out", tmp_path / "e.json"], capsys)
        assert code == 2 and "is an embed run" in err, err
    from stagewise.inference.ensemble import Ensemble

    with pytest.raises(ConfigError, match="embed run"):
        Ensemble([stagewise.load(runs["cls"]), stagewise.load(emb)])


@pytest.mark.parametrize("tta", ["five_crop", "ten_crop", "scales=0.9,1.0"])
def test_embed_run_with_multi_view_tta_is_a_clean_error(runs, tmp_path, capsys, tta):
    emb = _embed_run_with_classes(runs, tmp_path)
    images = runs["data"] / "val"
    code, err = _run(["predict", emb, images, "--tta", tta], capsys)
    assert code == 2 and "an embed run (task: embed)" in err and "evaluate --retrieval" in err, err
    code, err = _run(["evaluate", emb, "--data", runs["data"], "--tta", tta,
                      "--out", tmp_path / "e.json"], capsys)
    assert code == 2 and "an embed run (task: embed)" in err, err
    clf = stagewise.load(emb)
    batch = torch.stack([clf.input_transform(tta)(clf_image(runs))])
    with pytest.raises(DataError, match="embed run"):
        clf.probabilities(batch, tta)


def clf_image(runs: dict[str, Path]):
    from stagewise.data.images import load_rgb

    return load_rgb(next((runs["data"] / "val" / "alpha").iterdir()))


# ---- item 7: a train/ val/ folder is a split, not two identities ----

def test_retrieval_on_a_train_val_folder_searches_the_val_identities(runs, tmp_path, capsys):
    from stagewise.inference import evaluate_retrieval

    root = tmp_path / "reid"
    make_identity_folder(root / "train", identities=3, views=3, seed=1)
    make_identity_folder(root / "val", identities=4, views=3, seed=2)
    result = evaluate_retrieval(stagewise.load(runs["emb"]), root, num_workers=0)
    assert result.identities == 4 and result.queries == 12
    assert any("val" in n for n in result.notes)
    code, err = _run(["evaluate", runs["emb"], "--retrieval", "--data", root, "--split", "test",
                      "--out", tmp_path / "r.json", "--quiet"], capsys)
    assert code == 2 and "--split" in err and "train/, val/" in err, err
    code, _ = _run(["evaluate", runs["emb"], "--retrieval", "--data", root, "--split", "train",
                    "--out", tmp_path / "r.json", "--quiet"], capsys)
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["identities"] == 3


# ---- item 8: an index is searched only with the weights that built it ----

def test_search_refuses_an_index_built_by_other_weights(runs, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    index = tmp_path / "gallery.index"
    assert _run(["index", runs["cls"], runs["ids"], "--out", index, "--quiet"], capsys)[0] == 0
    sidecar = json.loads((tmp_path / "gallery.index.json").read_text())
    weights = runs["cls"] / "best.safetensors"
    assert sidecar["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    other = tmp_path / "other"
    shutil.copytree(runs["cls"], other)  # same architecture and embedding size, other weights
    state = load_file(other / "best.safetensors")
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()},
              other / "best.safetensors")
    query = runs["ids"] / "id00"
    code, err = _run(["search", index, query, "--model", other], capsys)
    assert code == 2 and str(runs["cls"] / "best.safetensors") in err and str(other) in err, err
    assert "other weights" in err and "stagewise index" in err
    assert _run(["search", index, query, "--model", runs["cls"], "--format", "json"], capsys)[0] == 0


# ---- item 14: model.json is validated against one schema with stated bounds ----

BAD_CARDS = [
    ("preprocess.image_size", lambda c: c["preprocess"].update(image_size=10**6), "16 to 2048"),
    ("preprocess.image_size", lambda c: c["preprocess"].update(image_size=0), "16 to 2048"),
    ("class_ids", lambda c: c.update(class_ids=5), "valid list"),
    ("num_classes", lambda c: c.update(num_classes="abc"), "valid integer"),
    ("architecture", lambda c: c.update(architecture="no_such_net"), "unknown model"),
    ("preprocess.interpolation", lambda c: c["preprocess"].update(interpolation="os.system"), "bicubic"),
    ("embedding.embedding_dim", lambda c: c.update(task="embed", embedding={"embedding_dim": 10**8}),
     "2 to 8192"),
    ("head_layers", lambda c: c.update(head_layers=[10**9]), "65,536"),
]


@pytest.mark.parametrize(("key", "change", "valid"), BAD_CARDS, ids=[f"{k}-{i}" for i, (k, *_) in
                                                                     enumerate(BAD_CARDS)])
def test_bad_model_json_values_name_the_key_and_the_valid_range(runs, tmp_path, capsys, key, change,
                                                                valid):
    run = tmp_path / "run"
    shutil.copytree(runs["cls"], run)
    card = json.loads((run / "model.json").read_text())
    change(card)
    (run / "model.json").write_text(json.dumps(card))
    image = next((runs["data"] / "val" / "alpha").iterdir())
    for args in (["predict", run, image], ["evaluate", run, "--data", runs["data"]]):
        code, err = _run(args, capsys)
        assert code == 2, err
        assert f"{run / 'model.json'}: " in err and f"{key}:" in err and valid in err, err
        assert str(image) not in err  # image_size 0 is the model's fault, not the image's
    from stagewise.runs.teacher import load_teacher

    with pytest.raises(ConfigError, match=rf"teacher: .*model.json: .*{key}:"):
        load_teacher(str(run))


# ---- item 15: a damaged index or sidecar is a clean error ----

@pytest.mark.parametrize("damage", ["random index", "pickled index", "sidecar not JSON",
                                    "sidecar without paths"])
def test_damaged_index_or_sidecar_is_a_clean_error(runs, tmp_path, capsys, damage):
    index = tmp_path / "g.index"
    assert _run(["index", runs["cls"], runs["ids"], "--out", index, "--quiet"], capsys)[0] == 0
    sidecar = tmp_path / "g.index.json"
    if damage == "random index":
        index.write_bytes(torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8).numpy().tobytes())
    elif damage == "pickled index":
        index.write_bytes(pickle.dumps({"vectors": [1.0, 2.0]}))
    elif damage == "sidecar not JSON":
        sidecar.write_text("{not json")
    else:
        meta = json.loads(sidecar.read_text())
        del meta["paths"]
        sidecar.write_text(json.dumps(meta))
    code, err = _run(["search", index, runs["ids"] / "id00"], capsys)
    assert code == 2 and "rebuild it with `stagewise index" in err, err
    assert (str(index) if "index" in damage else str(sidecar)) in err


# ---- item 18 ----

def test_embed_out_folder_names_the_real_path(runs, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    code, err = _run(["embed", runs["cls"], runs["ids"], "--out", folder], capsys)
    assert code == 2 and f"{folder}: is a folder" in err and str(folder / "embeddings.npz") in err
    assert ".tmp" not in err and not list(folder.iterdir())


def test_retrieval_needs_two_identities(runs, tmp_path, capsys):
    import warnings

    one = tmp_path / "one"
    shutil.copytree(runs["ids"] / "id00", one / "id00")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw library warning either
        code, err = _run(["evaluate", runs["emb"], "--retrieval", "--data", one,
                          "--out", tmp_path / "r.json"], capsys)
    assert code == 2 and "at least 2 identities, found 1 (id00)" in err, err
    assert not (tmp_path / "r.json").exists()


def test_weights_outside_the_run_folder_are_refused(runs, tmp_path):
    run = tmp_path / "a" / "run"
    shutil.copytree(runs["cls"], run)
    shutil.copytree(runs["cls"], tmp_path / "other")
    card = json.loads((run / "model.json").read_text())
    card["weights"] = "../../other/best.safetensors"
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=r"weights: points outside the run folder"):
        stagewise.load(run)
    card["weights"] = str(tmp_path / "other" / "best.safetensors")
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=r"weights: points outside the run folder"):
        stagewise.load(run)


# ---- item 20: a torchvision file under a name both libraries define ----

def test_torchvision_weights_under_a_shared_name_build_torchvisions_network(runs, tmp_path, capsys):
    from safetensors.torch import save_file
    from torchvision.models import efficientnet_b0

    torch.manual_seed(0)  # random init: no download
    weights = tmp_path / "effnet.safetensors"
    save_file({k: v.contiguous() for k, v in efficientnet_b0(num_classes=10).state_dict().items()},
              weights)
    out = tmp_path / "run"
    code = main(["train", "--data", str(runs["data"]), "--model", "efficientnet_b0", "--weights",
                 str(weights), "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--num-workers", "0", "--augmentation", "none", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    said = captured.out + captured.err
    assert "torchvision's layout of efficientnet_b0" in said and "built tv:efficientnet_b0" in said
    assert json.loads((out / "model.json").read_text())["architecture"] == "tv:efficientnet_b0"
    assert stagewise.load(out).predict(clf_image(runs)).class_id in CLASSES
