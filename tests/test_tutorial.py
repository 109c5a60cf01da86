"""What the tutorials do by hand: augmentation lists, timm's optimizers and schedule tails,
`stagewise models`, seed-style flag spellings, and chaining stages with --weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import stagewise
from conftest import crash_then_resume, make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.config import TrainConfig, build_config
from stagewise.data import AugmentPlan, ImageDataset, Preprocess, build_transform
from stagewise.data.folder import read_folder
from stagewise.data.loader import _EPOCH_STRIDE
from stagewise.errors import ConfigError
from stagewise.reporting.samples import augmentation_views
from stagewise.training.optim import Schedule, create_optimizer

AUGMENT = [{"RandomResizedCrop": {"size": 32, "scale": [0.5, 1.0]}}, "RandomHorizontalFlip",
           {"ColorJitter": {"brightness": 0.2}}, {"RandomErasing": {"p": 0.9}}, "TrivialAugmentWide"]
PRE = Preprocess(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _cfg(**kw) -> TrainConfig:
    return build_config({"data": "unused", "model": "test_resnet", **kw})


# ---- 1. augmentation lists ----

def test_augment_list_is_checked_at_load_with_the_valid_choices() -> None:
    assert _cfg(augment=AUGMENT).augment == AUGMENT
    with pytest.raises(ConfigError, match=r"unknown transform 'RandomFlip' \(did you mean .*; valid: .*RandomHorizontalFlip"):
        _cfg(augment=["RandomFlip"])
    with pytest.raises(ConfigError, match=r"ColorJitter has no argument 'brigthness'; valid: brightness"):
        _cfg(augment=[{"ColorJitter": {"brigthness": 0.2}}])
    with pytest.raises(ConfigError, match=r"RandomErasing\(p=2\)"):  # the class's own check
        _cfg(augment=[{"RandomErasing": {"p": 2}}])
    # A pasted Normalize sets the run's mean/std (test_tutorial_data.py); without them it says so.
    with pytest.raises(ConfigError, match=r"Normalize\(\).*'mean' and 'std'"):
        _cfg(augment=["Normalize"])
    with pytest.raises(ConfigError, match="list RandAugment"):
        _cfg(augment=["RandomHorizontalFlip"], auto_augment="rand-m9-mstd0.5")


def test_augment_list_pil_in_normalised_tensor_out_erasing_after_normalize() -> None:
    tf = build_transform(PRE, AugmentPlan(steps=tuple(AUGMENT)), training=True)
    names = [type(t).__name__ for t in tf.transforms]
    assert names.index("RandomErasing") > names.index("Normalize") > names.index("TrivialAugmentWide")
    x = tf(Image.new("RGB", (50, 40), (128, 0, 255)))
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    # No size-setting step: images are resized to the model's size so batches stack.
    assert build_transform(PRE, AugmentPlan(steps=("RandomHorizontalFlip",)), True)(
        Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def _key(epoch: int, index: int) -> int:
    return epoch * _EPOCH_STRIDE + index


def test_augment_list_same_seed_epoch_index_gives_the_same_tensor(tmp_path: Path) -> None:
    samples = read_folder(make_image_folder(tmp_path / "d", per_class=2)).splits["train"]
    tf = build_transform(PRE, AugmentPlan(steps=tuple(AUGMENT)), training=True)
    a, b = ImageDataset(samples, tf, seed=3, seeded=True), ImageDataset(samples, tf, seed=3, seeded=True)
    torch.manual_seed(123)  # the caller's stream must not matter, and must be left as it was
    before = torch.get_rng_state()
    first = a[_key(1, 4)][0]
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)
    assert torch.equal(b[_key(1, 4)][0], first)
    assert not torch.equal(a[_key(2, 4)][0], first)  # another epoch, another draw
    # The report's augmentation preview draws the same list.
    rows = augmentation_views(samples, PRE, AugmentPlan(steps=tuple(AUGMENT)), images=1, views=2)
    assert len(rows[0]) == 3 and rows[0][1].shape == (32, 32, 3)


def test_augment_list_and_timm_knobs_are_in_config_yaml(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    stagewise.train(tiny_config(data, tmp_path / "run", epochs=1, augment=AUGMENT), reporter="quiet")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["augment"] == AUGMENT
    assert "augment" not in json.loads((tmp_path / "run" / "model.json").read_text())
    cfg = _cfg(auto_augment="rand-m9-mstd0.5", re_prob=0.25)
    assert AugmentPlan.from_mapping(cfg.model_dump()).timm_kwargs()["re_prob"] == 0.25
    with pytest.raises(ConfigError, match="auto_augment 'bogus' is not a timm policy"):
        _cfg(auto_augment="bogus")


# ---- 2. optimizers from timm's registry, schedule tails ----

@pytest.mark.parametrize("name", ["lamb", "lion", "adan", "lars", "sgdp", "adabelief", "adafactor"])
def test_timm_optimizers_step_and_keep_the_no_decay_groups(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    opt = create_optimizer(model, _cfg(optimizer=name, lr=0.01, weight_decay=0.05, layer_decay=0.5))
    assert type(opt).__module__.startswith("timm.optim")
    no_wd = [g for g in opt.param_groups if g["name"].endswith("-no_wd")]
    assert no_wd and all(g["weight_decay"] == 0.0 for g in no_wd)
    assert {g["weight_decay"] for g in opt.param_groups if not g["name"].endswith("-no_wd")} == {0.05}
    assert len({g["lr"] for g in opt.param_groups}) > 1  # layer decay: per-group LRs kept
    before = model.fc.weight.detach().clone()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert not torch.equal(model.fc.weight, before)


def test_unknown_optimizer_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"optimizer: unknown value 'lamda' \(did you mean 'lamb\w*'\?\); "
                                          r"choose one of .*'adamw8bit'.*'lion'"):
        _cfg(optimizer="lamda")


def _lrs(steps: int = 20, **kw) -> list[float]:
    cfg = _cfg(lr=1.0, epochs=steps, **kw)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for g in opt.param_groups:
        g["lr"] = 1.0
    sched = Schedule(opt, cfg, steps_per_epoch=1)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_restarts_and_cooldown_shapes() -> None:
    lrs = _lrs(scheduler="cosine", restarts=1, min_lr=0.0)  # two cycles of 10 steps
    assert lrs[0] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.5) and lrs[9] < 0.05
    cool = _lrs(scheduler="cosine", cooldown_epochs=5, min_lr=0.01, warmup_epochs=2)
    assert cool[0] < 0.1 and cool[2] == pytest.approx(1.0)
    assert cool[-5:] == pytest.approx([0.01] * 5)  # the constant min_lr tail
    assert all(a >= b for a, b in zip(cool[2:15], cool[3:16], strict=True))
    with pytest.raises(ConfigError, match="restarts"):
        _cfg(scheduler="step", restarts=2)


# ---- 3. stagewise models ----

def test_models_lists_names_sizes_and_input_sizes(capsys) -> None:
    assert main(["models", "test_res", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    row = next(m for m in out["models"] if m["name"] == "test_resnet")
    assert row["params"] == sum(p.numel() for p in timm.create_model("test_resnet").parameters())
    assert row["input_size"] == 160 and row["library"] == "timm"
    assert main(["models", "resnet", "--limit", "3"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].startswith("resnet") and "more of" in table
    assert main(["models", "tv:resnet18", "--json"]) == 0
    tv_row = json.loads(capsys.readouterr().out)["models"][0]
    assert tv_row == {"name": "tv:resnet18", "library": "torchvision", "params": 11689512, "input_size": 224}
    assert main(["models", "test_resnet", "--pretrained", "--json"]) == 0
    tagged = json.loads(capsys.readouterr().out)["models"]
    assert {"name": "test_resnet.r160_in1k", "library": "timm", "params": row["params"],
            "input_size": 160} in tagged


# ---- 4. seed-style flag spellings ----

def test_tutorial_flag_spellings_are_accepted(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(data), "--output-dir", str(out), "--learning-rate", "0.02",
            "--freeze-backbone", "--model", "test_resnet", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--num-workers", "0", "--quiet", "--set", "report=false"]
    assert main(argv) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"] == str(data) and saved["out"] == str(out)
    assert saved["lr"] == 0.02 and saved["strategy"] == "probe"


# ---- 5. chaining stages by hand ----

def test_weights_with_model_json_beside_match_the_head_by_class_id(tmp_path: Path) -> None:
    a = make_image_folder(tmp_path / "a", classes=("a", "b", "c"), per_class=4)
    b = make_image_folder(tmp_path / "b", classes=("b", "c", "d"), per_class=4, seed=1)
    stagewise.train(tiny_config(a, tmp_path / "A", epochs=1), reporter="quiet")
    weights = tmp_path / "A" / "best.safetensors"
    # Zero epochs: B's best.safetensors holds the handed-over weights, untrained.
    stagewise.train(tiny_config(b, tmp_path / "B", epochs=0, weights=str(weights)), reporter="quiet")
    card = json.loads((tmp_path / "B" / "model.json").read_text())
    assert card["head"]["mode"] == "match" and (card["head"]["kept"], card["head"]["total"]) == (2, 3)
    sa, sb = load_file(str(weights)), load_file(str(tmp_path / "B" / "best.safetensors"))
    for cid in ("b", "c"):
        old, new = ("a", "b", "c").index(cid), card["class_ids"].index(cid)
        assert torch.equal(sb["fc.weight"][new], sa["fc.weight"][old])
        assert torch.equal(sb["fc.bias"][new], sa["fc.bias"][old])


def test_augment_list_timm_optimizer_and_schedule_tail_resume_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash inside epoch 2 and --resume end with the same weights as no crash: the augment
    list's draws, lamb's state and the restarts + cooldown schedule all come back as they were."""
    data = make_image_folder(tmp_path / "data", per_class=4)
    cfg = dict(epochs=3, batch_size=4, checkpoint_every=2, augment=AUGMENT, optimizer="lamb",
               restarts=1, cooldown_epochs=1, min_lr=1e-4)
    straight = stagewise.train(tiny_config(data, tmp_path / "straight", **cfg), reporter="quiet")
    resumed = crash_then_resume(tiny_config(data, tmp_path / "crashed", **cfg), monkeypatch)
    a, b = load_file(str(straight.weights)), load_file(str(resumed.weights))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [r["lr"] for r in straight.history] == [r["lr"] for r in resumed.history]


# ---- 6. a whole tutorial recipe, end to end ----

RECIPE_AUGMENT = [{"RandomResizedCrop": {"size": 32, "scale": [0.6, 1.0]}}, "RandomHorizontalFlip",
                  {"ColorJitter": {"brightness": 0.2}}]


def test_tutorial_recipe_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """torchvision resnet18 file -> custom augmentation list -> MLP head -> probe stage ->
    gradual stage -> distil into test_resnet -> ensemble of the two -> evaluate on the test split,
    all from one pipeline file and the command line."""
    from torchvision.models import resnet18

    data = make_image_folder(tmp_path / "data", per_class=6, splits=("train", "val", "test"))
    weights = tmp_path / "resnet18.pth"  # random init stands in for downloaded weights
    torch.manual_seed(0)
    torch.save(resnet18(num_classes=1000).state_dict(), weights)
    common = {"data": str(data), "image_size": 32, "batch_size": 8, "num_workers": 0, "seed": 0,
              "epochs": 1, "lr": 0.01, "augment": RECIPE_AUGMENT}
    pipeline = {"name": "recipe", "defaults": common, "stages": [
        {"name": "probe", "model": "tv:resnet18", "weights": str(weights), "strategy": "probe",
         "head_layers": [32]},
        {"name": "gradual", "model": "tv:resnet18", "strategy": "gradual", "head_layers": [32],
         "lr": 0.003},
        {"name": "student", "model": "test_resnet", "init": "scratch", "strategy": "scratch",
         "teacher": "gradual", "distill": {"alpha": 0.5, "temperature": 2.0}}]}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(pipeline))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    stages = out / "stages"
    for name in ("probe", "gradual", "student"):
        assert (stages / name / "best.safetensors").is_file() and (stages / name / "test.json").is_file()
    manifest = json.loads((out / "pipeline.json").read_text())
    assert manifest["stages"]["gradual"]["how"] == "starts from stage 'probe'"
    assert all(manifest["stages"][n]["test_top1"] is not None for n in ("probe", "gradual", "student"))
    probe_card = json.loads((stages / "probe" / "model.json").read_text())
    assert probe_card["head_layers"] == [32] and probe_card["architecture"] == "tv:resnet18"
    assert yaml.safe_load((stages / "probe" / "config.yaml").read_text())["augment"] == RECIPE_AUGMENT
    student = yaml.safe_load((stages / "student" / "config.yaml").read_text())
    assert student["teacher"] == str(stages / "gradual") and student["distill"]["alpha"] == 0.5
    assert json.loads((stages / "student" / "model.json").read_text())["teacher"]["architecture"] == "tv:resnet18"
    report = (out / "report.md").read_text()
    assert "test top-1" in report and f"Stage 'student' was distilled from {stages / 'gradual'}" in report
    # The ensemble of teacher and student, scored on the test split.
    capsys.readouterr()
    target = tmp_path / "ensemble.json"
    assert main(["evaluate", str(stages / "gradual"), str(stages / "student"), "--data", str(data),
                 "--split", "test", "--out", str(target), "--num-workers", "0"]) == 0
    assert "ensemble (mean probability)" in capsys.readouterr().out
    saved = json.loads(target.read_text())
    assert len(saved["members"]) == 2 and saved["images"] == 18
