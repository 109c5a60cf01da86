"""stagewise.train with Python objects (a plain torch module, torchvision datasets, DataLoaders)
and callbacks: train, stop on a failing callback, resume with the same objects, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import stagewise
from conftest import tiny_config


class TinyNet(nn.Module):
    """A network of the user's own, not timm's: a conv body and a 10-way classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class Recorder(stagewise.Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.epochs: list[int] = []

    def on_stage_start(self, info: stagewise.StageInfo) -> None:
        self.calls.append(f"start@{info.start_epoch}")

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        assert (path / "state.json").exists() or path.is_dir()
        self.calls.append(f"checkpoint {epoch}")

    def on_epoch_end(self, record: dict) -> None:
        self.epochs.append(record["epoch"])
        self.calls.append(f"epoch {record['epoch']}")

    def on_stage_end(self, result: stagewise.TrainResult) -> None:
        self.calls.append(f"end {result.stopped}")


class FailingLogger(stagewise.Callback):
    def on_epoch_end(self, record: dict) -> None:
        raise RuntimeError("tracker unreachable")


def _fake(size: int, offset: int, **kw):
    from torchvision.datasets import FakeData

    return FakeData(size=size, image_size=(3, 32, 32), num_classes=2, random_offset=offset, **kw)


def test_plain_module_trains_stops_on_a_callback_resumes_and_predicts(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    train, val = DataLoader(_fake(24, 0), batch_size=8), _fake(12, 1000)
    out = tmp_path / "run"
    kw = dict(strategy="finetune", epochs=2, out=str(out), image_size=32, num_workers=0,
              reporter="plain", report=False)
    rec = Recorder()
    # A callback that raises stops the run after epoch 1's checkpoint, naming the callback.
    with pytest.raises(stagewise.CallbackError, match=r"FailingLogger\.on_epoch_end raised "
                                                      r"RuntimeError: tracker unreachable") as err:
        stagewise.train(model=TinyNet(), data=(train, val), callbacks=[rec, FailingLogger()], **kw)
    assert "checkpoint of epoch 1" in str(err.value) and err.value.exit_code == 1
    assert (out / "last").is_dir() and len((out / "history.jsonl").read_text().splitlines()) == 1
    # The same objects again, with resume=True: epoch 2 trains from the checkpoint.
    result = stagewise.train(model=TinyNet(), data=(train, val), callbacks=[rec], resume=True, **kw)
    assert rec.epochs == [1, 2] and [r["epoch"] for r in result.history] == [1, 2]
    assert rec.calls == ["start@0", "checkpoint 1", "epoch 1", "start@1", "checkpoint 2", "epoch 2",
                         "end completed"]
    # finetune: the head alone for freeze_epochs=1, then all 4 groups (conv, bn, conv, fc).
    first, second = result.history
    assert first["groups_unfrozen"] == 1 and second["groups_unfrozen"] == second["groups_total"] == 4
    card = json.loads((out / "model.json").read_text())
    assert card["architecture"] == f"python:{__name__}.TinyNet" and card["head"]["path"] == "fc"
    assert (out / "config.yaml").read_text().count("batch_size: 8") == 1  # from the DataLoader
    # Predict: a fresh instance of the class, its classifier resized as training did.
    clf = stagewise.load(out, model=TinyNet(), device="cpu")
    preds = clf.predict([val[i][0] for i in range(3)], top_k=2)
    assert len(preds) == 3 and {p.class_id for p in preds} <= {"0", "1"}
    torch.testing.assert_close(clf.model.fc.weight, _best(out)["fc.weight"])
    with pytest.raises(stagewise.WeightsError, match=r"stagewise.load\(run, model=TinyNet\(...\)\)"):
        stagewise.load(out)


def _best(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "best.safetensors"))


def test_callbacks_on_a_named_run_and_stop_training(image_folder: Path, tmp_path: Path) -> None:
    class StopAfterFirst(stagewise.Callback):
        def on_epoch_end(self, record: dict) -> None:
            raise stagewise.StopTraining("enough")

    rec = Recorder()
    result = stagewise.train(**tiny_config(image_folder, tmp_path / "run", weights=None),
                             callbacks=[rec, StopAfterFirst()], reporter="plain")
    assert result.stopped == "stopped by a callback (enough)" and rec.epochs == [1]
    assert rec.calls[-1] == "end stopped by a callback (enough)"
    with pytest.raises(stagewise.ConfigError, match=r"Recorder is a class; pass an instance"):
        stagewise.train(**tiny_config(image_folder, tmp_path / "other"), callbacks=[Recorder])
    assert not (tmp_path / "other").exists()


def test_tensors_from_the_users_transform_are_used_as_given() -> None:
    from torchvision.transforms import ToTensor

    from stagewise.data import ImageDataset
    from stagewise.data.objects import index_from_objects, index_yields_tensors

    ds = _fake(6, 0, transform=ToTensor())
    index, _ = index_from_objects(ds, _fake(4, 50))
    assert index.class_ids == ["0", "1"] and len(index.splits["train"]) == 6
    assert index_yields_tensors(index)  # said in the log: no preprocessing or augmentation added
    assert not index_yields_tensors(index_from_objects(_fake(4, 0), _fake(4, 50))[0])
    item = ImageDataset(index.splits["train"], transform=lambda img: pytest.fail("transformed"))[2]
    torch.testing.assert_close(item[0], ds[2][0])
    assert item[1] == ds[2][1]


def test_bad_objects_are_named() -> None:
    from torch.utils.data import Dataset, IterableDataset

    from stagewise.data.objects import index_from_objects

    class Stream(IterableDataset):
        def __iter__(self):
            yield from ()

    class Named(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return torch.zeros(3, 8, 8), "cat"

    with pytest.raises(stagewise.DataError, match=r"Stream is not a map-style dataset"):
        index_from_objects(Stream(), _fake(4, 0))
    with pytest.raises(stagewise.DataError, match=r"item 0 of the Named has label 'cat'"):
        index_from_objects(Named(), _fake(4, 0))
    with pytest.raises(stagewise.WeightsError, match=r"head='classifier'.*children: features, fc"):
        stagewise.train(model=TinyNet(), data=(_fake(8, 0), _fake(4, 9)), head="classifier",
                        out="/nonexistent/never-written", reporter="plain")


def test_fallback_groups_of_a_module_of_ones_own() -> None:
    from stagewise.models.groups import MAX_FALLBACK_GROUPS
    from stagewise.models.user import adopt_module
    from stagewise.training.strategies import apply_strategy, coarse_groups

    class Wrapped(nn.Module):  # one body holding many blocks, and a parameter of its own
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(4))
            self.backbone = nn.Sequential(*[nn.Linear(4, 4) for _ in range(9)])
            self.out = nn.Linear(4, 3)

    model = Wrapped()
    report = adopt_module(model, ["a", "b", "c"])
    assert report.mode == "keep" and report.path == "out"
    groups = coarse_groups(model)
    assert len(groups) == MAX_FALLBACK_GROUPS + 1 and groups[-1] == ["out.weight", "out.bias"]
    assert groups[0][0] == "token" and groups[0][1:] == ["backbone.0.weight", "backbone.0.bias",
                                                          "backbone.1.weight", "backbone.1.bias"]
    assert sorted(n for g in groups for n in g) == sorted(n for n, _ in model.named_parameters())
    trained = apply_strategy(model, "gradual", epoch=1)
    assert trained.groups_unfrozen == 2 and model.backbone[8].weight.requires_grad
    assert not model.backbone[0].weight.requires_grad


def test_callbacks_on_a_pipeline_see_every_stage(image_folder: Path, tmp_path: Path) -> None:
    class Stages(stagewise.Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[str, int]] = []

        def on_epoch_end(self, record: dict) -> None:
            self.seen.append((self.stage, record["epoch"]))

        def on_stage_start(self, info: stagewise.StageInfo) -> None:
            self.stage = info.run_dir.name

    fast = {k: v for k, v in tiny_config(image_folder, tmp_path).items() if k not in ("data", "out")}
    pipeline = {"defaults": {**fast, "data": str(image_folder), "epochs": 1},
                "stages": [{"name": "a", "strategy": "scratch"}, {"name": "b", "strategy": "finetune"}]}
    cb = Stages()
    stagewise.run(pipeline, tmp_path / "run", reporter="quiet", callbacks=[cb])
    assert cb.seen == [("a", 1), ("b", 1)]
