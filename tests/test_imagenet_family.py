"""`data synth --preset imagenet-family`: the four fake ImageNet layouts the imagenet-progressive
preset reads, each detected as the real layout, with real wnids, and runnable end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import stagewise
from stagewise.cli import main
from stagewise.data.imagenet import IMAGENETTE_WNIDS, WNID
from stagewise.data.layouts import load_dataset
from stagewise.data.synth_imagenet import FOLDERS, family_wnids, generate_family
from stagewise.runs.presets import load_preset

CLASSES = 14
EXPECTED = {"imagenette2": ("imagenette", 10), "tiny-imagenet-200": ("tiny-imagenet", CLASSES),
            "imagenet-mini": ("imagenet", CLASSES), "imagenet": ("imagenet", CLASSES)}


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fam")
    generate_family(out, classes=CLASSES, per_class=3, size=32, seed=0)
    return out


def test_each_folder_is_detected_as_its_real_layout(family: Path) -> None:
    indexes = {}
    for name in FOLDERS:
        index = load_dataset(family / name)
        layout, classes = EXPECTED[name]
        assert index.layout == layout, name
        assert index.num_classes == classes, name
        assert all(WNID.match(c) for c in index.class_ids), name
        assert index.class_ids == sorted(index.class_ids)
        for split in ("train", "val"):  # the layout's own val split, every class in both
            assert set(index.splits[split].labels) == set(range(classes)), (name, split)
        indexes[name] = index
    assert len(indexes["imagenette2"].splits["train"]) == 10 * 3
    assert len(indexes["imagenette2"].splits["val"]) == 10 * 2
    assert set(indexes["imagenette2"].class_ids) == IMAGENETTE_WNIDS
    assert len(indexes["imagenet"].class_ids) > len(IMAGENETTE_WNIDS)
    for name in ("tiny-imagenet-200", "imagenet"):
        assert IMAGENETTE_WNIDS.issubset(indexes[name].class_ids), name
    assert indexes["imagenet-mini"].class_ids == indexes["imagenet"].class_ids
    # Real names, from the datasets' own words.txt / LOC_synset_mapping.txt
    assert indexes["tiny-imagenet-200"].class_names[0] == "tench"
    assert indexes["imagenet"].class_names[0] == "tench"


def test_val_comes_from_the_label_files_not_a_held_out_fraction(family: Path) -> None:
    tiny = load_dataset(family / "tiny-imagenet-200")
    assert {p.parent for p in tiny.splits["val"].paths} == {family / "tiny-imagenet-200" / "val" / "images"}
    lines = (family / "tiny-imagenet-200" / "val" / "val_annotations.txt").read_text().splitlines()
    want = {line.split("\t")[0]: line.split("\t")[1] for line in lines}
    got = {p.name: tiny.class_ids[lab] for p, lab in zip(tiny.splits["val"].paths, tiny.splits["val"].labels,
                                                          strict=True)}
    assert got == want
    kaggle = load_dataset(family / "imagenet")
    val = family / "imagenet" / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    assert {p.parent for p in kaggle.splits["val"].paths} == {val}
    assert len(kaggle.splits["val"]) == CLASSES * 2 and len(kaggle.splits["train"]) == CLASSES * 3
    assert (family / "tiny-imagenet-200" / "test" / "images").is_dir()
    assert (family / "tiny-imagenet-200" / "train" / "n01440764" / "n01440764_boxes.txt").is_file()


def test_class_list_is_imagenette_first_then_real_imagenet_wnids() -> None:
    from timm.data import ImageNetInfo

    real = set(ImageNetInfo("imagenet-1k").label_names())
    wnids = family_wnids(300)
    assert len(set(wnids)) == 300 and set(wnids) <= real
    assert set(wnids[:10]) == IMAGENETTE_WNIDS
    assert family_wnids(20) == family_wnids(20)
    for bad in (10, 1001):  # exactly Imagenette's 10 would be detected as Imagenette
        with pytest.raises(ValueError, match="classes must be"):
            family_wnids(bad)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_family(tmp_path / name, classes=11, per_class=1, size=16, seed=seed)
    a, b, c = (digests(tmp_path / n) for n in "abc")
    assert a == b and len(a) > 100
    assert a.keys() == c.keys() and a != c


def test_cli_writes_the_family_and_refuses_bad_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fam"
    assert main(["data", "synth", str(out), "--preset", "imagenet-family", "--classes", "11",
                 "--per-class", "2", "--size", "24", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith(str(out))] == [str(out / f) for f in FOLDERS]
    assert "files" in printed and f"data_root={out}" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(FOLDERS)
    assert main(["data", "synth", str(tmp_path / "bad"), "--preset", "imagenet-family",
                 "--classes", "5"]) != 0
    assert "classes must be 11 to 1000" in capsys.readouterr().err


def _fast_overrides(data_root: Path) -> list[str]:
    """What the preset needs changed to run on a CPU in seconds: every stage sets its own
    image_size, epochs, batch_size and warm-up (defaults.* would lose to them)."""
    sets = [f"data_root={data_root}", "defaults.model=test_resnet", "defaults.num_workers=0",
            "defaults.augmentation=none", "defaults.seed=0"]
    for stage in ("imagenette", "tiny-imagenet", "imagenet-mini", "imagenet-1k"):
        sets += [f"stages.{stage}.image_size=32", f"stages.{stage}.epochs=1", f"stages.{stage}.batch_size=16",
                 f"stages.{stage}.warmup_epochs=0"]
    return sets


def test_dry_run_shows_the_recipe_each_stage_would_run_with(family: Path, capsys) -> None:
    """The issue's acceptance: the scratch stage trains everything from epoch 1 without layer
    decay, every SGD stage has SGD's weight decay, later stages are handoffs, LRs are scaled."""
    assert main(["run", "imagenet-progressive", "--set", f"data_root={family}", "--dry-run",
                 "--log-format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["imagenette", "tiny-imagenet", "imagenet-mini", "imagenet-1k"]
    first = rows[0]
    assert (first["strategy"], first["weights_source"], first["freeze_epochs"], first["layer_decay"]) == \
        ("scratch", "none", 0, None)
    assert all(r["weight_decay"] <= 5e-4 for r in rows if r["optimizer"] == "sgd")
    assert all(r["weights_source"] == "handoff" and r["freeze_epochs"] == 0 for r in rows[1:])
    assert all(r["channels_last"] and r["checkpoint_every"] and r["lr_scale"] == "linear" for r in rows)
    assert rows[0]["lr_used"] == pytest.approx(0.1 * 64 / 256) and rows[0]["global_batch"] == 64
    assert rows[0]["train_images"] == 10 * 3 and rows[0]["steps"] == 20 and not rows[0]["problems"]


def test_dry_run_lists_missing_folders_without_failing(tmp_path: Path, capsys) -> None:
    assert main(["run", "imagenet-progressive", "--set", f"data_root={tmp_path / 'none'}", "--dry-run",
                 "--log-format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(any("folder not found" in p for p in r["problems"]) for r in rows)
    assert not (tmp_path / "none").exists()


def test_skipping_a_stage_whose_successor_needs_its_weights_is_refused(family: Path, tmp_path: Path,
                                                                        capsys) -> None:
    code = main(["run", "imagenet-progressive", "--out", str(tmp_path / "run"), "--stages",
                 "imagenette,imagenet-mini", "--quiet", *[a for s in _fast_overrides(family)
                                                          for a in ("--set", s)]])
    assert code == 2
    err = capsys.readouterr().err
    assert "'imagenet-mini' starts from stage 'tiny-imagenet', which --stages skips" in err
    assert "stages.imagenet-mini.init=" in err and not (tmp_path / "run" / "stages").exists()


@pytest.mark.slow
def test_imagenet_progressive_runs_end_to_end_on_the_fake_family(family: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = stagewise.run(load_preset("imagenet-progressive"), out, overrides=_fast_overrides(family),
                           reporter="quiet")
    manifest = json.loads((out / "pipeline.json").read_text())
    stages = manifest["stages"]
    assert list(stages) == ["imagenette", "tiny-imagenet", "imagenet-mini", "imagenet-1k"]
    assert all(s["status"] == "done" for s in stages.values())
    assert [s["classes"] for s in stages.values()] == [10, CLASSES, CLASSES, CLASSES]
    # The head handoff by wnid: Tiny ImageNet keeps Imagenette's 10 rows, the later stages all.
    assert [s["head"]["kept"] for s in stages.values()] == [0, 10, CLASSES, CLASSES]
    assert result is not None
