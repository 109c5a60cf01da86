"""What a user brings from a torchvision tutorial: a pasted transform list, a subset to try a
recipe on, Flowers-102/Pets/Food-101 in their published layouts, and Grad-CAM of predictions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import tiny_config
from fake_layouts import FOODS, make_food
from stagewise.config.schema import build_config
from stagewise.data.index import Samples
from stagewise.data.subset import take_subset
from stagewise.errors import ConfigError, DataError
from stagewise.runfolder import read_split

IMAGENET_NORM = "Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])"
PASTED = ["RandomResizedCrop(32, scale=(0.5, 1.0))", "RandomHorizontalFlip()", "ToTensor()",
          "Normalize(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])"]


def test_pasted_list_becomes_canonical_steps_and_sets_normalisation_and_size() -> None:
    cfg = build_config({"data": "d", "model": "test_resnet", "augment": [
        "transforms.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC)",
        "T.RandomHorizontalFlip()", "ToTensor()", "ToDtype(torch.float32, scale=True)", IMAGENET_NORM]})
    assert cfg.augment == [
        {"RandomResizedCrop": {"size": 224, "scale": [0.08, 1.0], "interpolation": "bicubic"}},
        "RandomHorizontalFlip", "ToTensor", "ToDtype",
        {"Normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}]
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.image_size == 224  # the crop's size, training and evaluation alike
    # One pasted string, Compose and all, reads the same; the canonical form validates again
    # (config.yaml on resume).
    whole = build_config({"data": "d", "model": "test_resnet", "augment":
                          f"transforms.Compose([transforms.Resize(40), transforms.ToTensor(), {IMAGENET_NORM}])"})
    assert whole.augment[0] == {"Resize": {"size": 40}} and whole.image_size is None
    assert build_config(cfg.resolved()).augment == cfg.augment
    # An explicit image_size wins (allowed before pasting existed); the stage log warns.
    assert build_config({"data": "d", "image_size": 64, "augment": ["RandomResizedCrop(224)"]}).image_size == 64


@pytest.mark.parametrize("given, expected", [
    ({"augment": ["Normalize(mean=[120, 115, 100], std=[58, 57, 57])"]}, "0..255 scale"),
    ({"augment": ["RandomResizedCrop(size=crop)"]}, "only literal values"),
    ({"augment": [IMAGENET_NORM], "mean": [0.5, 0.5, 0.5]}, "the run normalises once"),
    ({"augment": ["CenterCrop([32, 48])"]}, "square"),
    ({"augment": "Compose([RandomHorizontalFlip()"}, "not a transform call"),
    ({"augment": ["RandomResizedCrop(224", "scale=(0.5", "1.0))"]}, "quote each call"),
    ({"train_subset": 0}, "train_subset"), ({"val_subset": "5/klass"}, "K/class"),
    ({"train_subset": {"per_class": 2, "total": 5}}, "one of per_class or total"),
])
def test_bad_pasted_lists_and_subsets_name_the_key_and_the_fix(given, expected) -> None:
    with pytest.raises(ConfigError, match=expected) as err:
        build_config({"data": "d", "model": "test_resnet", **given})
    assert err.value.exit_code == 2


def test_subsets_are_stratified_seeded_and_independent_of_listing_order() -> None:
    paths = [Path(f"c{c}/img{i:02d}.jpg") for c in range(3) for i in range(10 if c else 4)]
    samples = Samples(labels=[int(p.parts[0][1]) for p in paths], paths=paths)
    per_class = take_subset(samples, 3, 3, None, seed=0)
    assert per_class.counts(3) == [3, 3, 3]
    total = take_subset(samples, 3, None, 12, seed=0)
    assert total.counts(3) == [2, 5, 5] and len(total) == 12  # in proportion to 4:10:10
    order = list(range(len(paths)))
    random.Random(1).shuffle(order)
    shuffled = samples.subset(order)
    assert sorted(take_subset(shuffled, 3, None, 12, seed=0).paths) == sorted(total.paths)
    assert sorted(take_subset(samples, 3, None, 12, seed=1).paths) != sorted(total.paths)
    assert len(take_subset(samples, 3, None, 100, seed=0)) == len(samples)  # all there is
    with pytest.raises(DataError, match="at least 3"):
        take_subset(samples, 3, None, 2, seed=0)


@pytest.fixture(scope="module")
def food_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A tiny run on a fake Food-101, configured as a tutorial would: a YAML file with a pasted
    augment list and a subset."""
    import stagewise
    from stagewise.training.progress import QuietReporter

    tmp = tmp_path_factory.mktemp("food")
    data = make_food(tmp / "data", train=6, test=2)
    cfg = tiny_config(data, tmp / "run", epochs=1, train_subset="3/class", val_subset=2)
    del cfg["image_size"]  # set by the pasted crop
    # The calls as a tutorial prints them, one per line, unquoted.
    (tmp / "stage.yaml").write_text(yaml.safe_dump(cfg) + "augment:\n" + "".join(f"  - {c}\n" for c in PASTED))
    lines: list[str] = []

    class Collect(QuietReporter):
        def message(self, text: str) -> None:
            lines.append(text)

    stagewise.train(tmp / "stage.yaml", reporter=Collect())
    return tmp, tmp / "run", "\n".join(lines)


def test_tutorial_yaml_trains_on_food101_with_pasted_augment_and_subsets(food_run) -> None:
    tmp, run, log = food_run
    card = json.loads((run / "model.json").read_text())
    assert card["preprocess"]["mean"] == [0.5, 0.5, 0.5] and card["preprocess"]["std"] == [0.25] * 3
    assert card["preprocess"]["image_size"] == 32
    assert card["class_ids"] == list(FOODS)
    assert "ToTensor, Normalize skipped as steps" in log and "differs from test_resnet's" in log
    split = read_split(run)["splits"]
    assert len(split["train"]) == 9 and len(split["val"]) == 2 and len(split["test"]) == 6
    assert sorted({p.split("/")[1] for p in split["train"]}) == sorted(FOODS)  # 3 of each
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train_subset"]["per_class"] == 3 and config["val_subset"]["total"] == 2
    assert build_config(config).augment == config["augment"]  # what a resume reads back


def test_explain_writes_one_captioned_overlay_per_image(food_run) -> None:
    from stagewise.cli import main

    tmp, run, _ = food_run
    images = sorted((tmp / "data" / "food-101" / "images" / "waffles").glob("*.jpg"))[:3]
    out = tmp / "explain"
    assert main(["explain", str(run), *map(str, images), "--out", str(out), "--quiet"]) == 0
    overlays = sorted(out.glob("*.gradcam.png"))
    assert [p.name for p in overlays] == [f"{p.stem}.gradcam.png" for p in images]
    text = Image.open(overlays[0]).text  # type: ignore[attr-defined]
    assert text["class_id"] in FOODS and 0.0 < float(text["probability"]) <= 1.0
    assert len((out / "explanations.csv").read_text().splitlines()) == 1 + len(images)
    assert main(["explain", str(run), str(tmp / "missing.jpg"), "--out", str(tmp / "none")]) == 2
    assert not (tmp / "none").exists()  # nothing written for a bad path


def test_report_grid_gets_gradcam_of_top_losses_and_a_note_without_the_package(
        food_run, monkeypatch: pytest.MonkeyPatch) -> None:
    import stagewise.inference.explain as explain
    from stagewise.data.layouts import load_dataset
    from stagewise.reporting.document import Image as Figure
    from stagewise.reporting.document import Text
    from stagewise.reporting.gradcam import gradcam_top_losses

    tmp, run, _ = food_run
    samples = load_dataset(tmp / "data").splits["test"]
    mistakes = [(0, 0, 1, 0.9), (3, 1, 2, 0.8)]
    blocks = gradcam_top_losses(run / "best.safetensors", samples, mistakes, list(FOODS), tmp)
    assert isinstance(blocks[0], Figure) and blocks[0].path.is_file()

    def missing() -> None:
        raise explain.ExplainError("Grad-CAM needs the grad-cam package")

    monkeypatch.setattr(explain, "require_gradcam", missing)
    blocks = gradcam_top_losses(run / "best.safetensors", samples, mistakes, list(FOODS), tmp)
    assert isinstance(blocks[0], Text) and blocks[0].note


def test_target_layer_from_timm_feature_info_or_the_last_spatial_map() -> None:
    import timm
    import torchvision

    from stagewise.inference.explain import target_layer

    assert target_layer(timm.create_model("test_resnet", num_classes=3), 32)[0] == "layer4"
    tv = torchvision.models.resnet18(num_classes=3)
    assert target_layer(tv, 64)[0] == "layer4"  # not avgpool: pooling layers are passed over
