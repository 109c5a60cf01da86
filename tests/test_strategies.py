"""Each strategy freezes exactly what it claims: parameters, BatchNorm mode and running stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch.nn.modules.batchnorm import _BatchNorm

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.kinds import Unfreezing, strategy
from stagewise.models.head import classifier_keys
from stagewise.training.strategies import (
    apply_strategy,
    coarse_groups,
    set_train_mode,
)

HEAD = {"fc.weight", "fc.bias"}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=3)
    # timm zero-initialises each block's last BN scale, which zeroes the first step's gradient of
    # the whole residual branch; unit scales let every trainable parameter move in one step.
    with torch.no_grad():
        for bn in _bn_modules(model).values():
            bn.weight.fill_(1.0)
    return model


def _one_step(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One SGD step on random data; returns the parameters as they were before it."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    return before


def _changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def _bn_modules(model: torch.nn.Module) -> dict[str, _BatchNorm]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


def _bn_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state.items() if k.endswith(keys)}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("strategies") / "data", per_class=8)


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded test_resnet with non-trivial BN running stats, saved as safetensors."""
    model = _model(seed=3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32) * 2 + 0.5)
    path = tmp_path_factory.mktemp("weights") / "start.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_classifier_is_last_coarse_group() -> None:
    model = _model()
    groups = coarse_groups(model)
    assert set(groups[-1]) == HEAD == set(classifier_keys(model))
    assert groups[0][0].startswith("conv1")
    assert sorted(n for g in groups for n in g) == sorted(n for n, _ in model.named_parameters())


def test_probe_trains_only_the_classifier_with_bn_in_eval() -> None:
    model = _model()
    info = apply_strategy(model, "probe", epoch=0)
    set_train_mode(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == HEAD
    assert info.groups_unfrozen == 1 and info.trainable_params == sum(p.numel() for p in model.fc.parameters())
    assert all(not m.training for m in _bn_modules(model).values())
    stats = _bn_buffers(model.state_dict())
    stats = {k: v.clone() for k, v in stats.items()}
    assert _changed(model, _one_step(model)) == HEAD
    after = _bn_buffers(model.state_dict())
    assert all(torch.equal(stats[k], after[k]) for k in stats)


def test_finetune_trains_everything() -> None:
    model = _model()
    info = apply_strategy(model, "finetune", epoch=0)
    set_train_mode(model)
    assert all(p.requires_grad for p in model.parameters())
    assert info.trainable_params == info.total_params
    assert all(m.training for m in _bn_modules(model).values())
    assert _changed(model, _one_step(model)) == {n for n, _ in model.named_parameters()}


def test_freeze_patterns_freeze_matching_params_and_their_bn() -> None:
    model = _model()
    apply_strategy(model, "finetune", epoch=0, freeze=["conv1.*", "bn1.*", "layer1.*"])
    set_train_mode(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in frozen)
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
    for name, bn in _bn_modules(model).items():
        assert bn.training == (not name.startswith(("conv1", "bn1", "layer1"))), name
    changed = _changed(model, _one_step(model))
    assert changed and not changed & frozen


def test_train_bn_keeps_batchnorm_training_in_frozen_parts() -> None:
    model = _model()
    apply_strategy(model, "probe", epoch=0, train_bn=True)
    set_train_mode(model, train_bn=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    bn_params = {f"{m}.{p}" for m, mod in _bn_modules(model).items() for p, _ in mod.named_parameters()}
    assert trainable == HEAD | bn_params
    assert all(m.training for m in _bn_modules(model).values())
    before = {k: v.clone() for k, v in _bn_buffers(model.state_dict()).items()}
    _one_step(model)
    after = _bn_buffers(model.state_dict())
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))


def test_gradual_schedules() -> None:
    gradual = strategy("gradual")

    def groups(epochs: int, every: int, at: tuple[int, ...] | None = None) -> list[int]:
        return [gradual.trainable_groups(e, 6, Unfreezing(every=every, at=at)) for e in range(epochs)]

    assert groups(8, 1) == [1, 2, 3, 4, 5, 6, 6, 6]
    assert groups(6, 2) == [1, 1, 2, 2, 3, 3]
    # unfreeze_at names epochs as history.jsonl counts them (1-based): the 2nd and 4th epochs
    # are the first to train with one more group.
    assert groups(5, 1, (2, 4)) == [1, 2, 2, 3, 3]
    assert groups(6, 2) == groups(6, 99, (3, 5))


def test_gradual_unfreezes_groups_from_the_head_down() -> None:
    model = _model()
    groups = coarse_groups(model)
    for epoch, expected in ((0, 1), (1, 2), (2, 3)):
        info = apply_strategy(model, "gradual", epoch=epoch, unfreeze_every=1)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert info.groups_unfrozen == expected
        assert trainable == {n for g in groups[-expected:] for n in g}


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_probe_run_leaves_backbone_and_bn_stats_untouched(data: Path, start_weights: Path, tmp_path: Path) -> None:
    start = load_file(str(start_weights))
    result = stagewise.train(tiny_config(data, tmp_path / "run", weights=str(start_weights),
                                         strategy="probe", epochs=2, augmentation="none"),
                             reporter="quiet")
    history = _history(result.run_dir)
    assert [r["groups_unfrozen"] for r in history] == [1, 1]
    assert all(r["trainable_params"] == 3 * 96 + 3 for r in history)  # 3 classes x 96 features + bias
    for path in (result.run_dir / "last" / "model.safetensors", result.weights):
        end = load_file(str(path))
        stats = _bn_buffers(start)
        assert stats and all(torch.equal(stats[k], end[k]) for k in stats), path
        body = [k for k in start if k not in HEAD]
        assert all(torch.equal(start[k], end[k]) for k in body), path
    assert not torch.equal(load_file(str(result.run_dir / "last" / "model.safetensors"))["fc.weight"],
                           torch.zeros(3, 96))


def test_finetune_run_updates_backbone_and_bn_stats(data: Path, start_weights: Path, tmp_path: Path) -> None:
    start = load_file(str(start_weights))
    # freeze_epochs 0: the finetune's default first epoch trains the head alone (tested below)
    result = stagewise.train(tiny_config(data, tmp_path / "run", weights=str(start_weights),
                                         strategy="finetune", epochs=1, freeze_epochs=0), reporter="quiet")
    end = load_file(str(result.run_dir / "last" / "model.safetensors"))
    assert not torch.equal(start["conv1.0.weight"], end["conv1.0.weight"])
    assert not torch.equal(start["bn1.running_mean"], end["bn1.running_mean"])
    assert result.history[0]["trainable_params"] == result.history[0]["total_params"]


def test_gradual_run_history_grows_groups(data: Path, tmp_path: Path) -> None:
    result = stagewise.train(tiny_config(data, tmp_path / "run", strategy="gradual", epochs=3,
                                         unfreeze_every=1), reporter="quiet")
    history = _history(result.run_dir)
    assert [r["groups_unfrozen"] for r in history] == [1, 2, 3]
    assert all(r["groups_total"] == 6 for r in history)
    params = [r["trainable_params"] for r in history]
    assert params[0] < params[1] < params[2] < history[0]["total_params"]
    assert "event" not in history[0]
    assert [r.get("event") for r in history[1:]] == ["unfreeze: 2/6 groups", "unfreeze: 3/6 groups"]


def test_gradual_run_with_explicit_schedule(data: Path, tmp_path: Path) -> None:
    result = stagewise.train(tiny_config(data, tmp_path / "run", strategy="gradual", epochs=3,
                                         unfreeze_at=[3]), reporter="quiet")
    assert [r["groups_unfrozen"] for r in _history(result.run_dir)] == [1, 1, 2]


def test_finetune_with_freeze_epochs_trains_the_head_first(data: Path, tmp_path: Path) -> None:
    result = stagewise.train(tiny_config(data, tmp_path / "run", strategy="finetune", epochs=3,
                                         freeze_epochs=1), reporter="quiet")
    history = _history(result.run_dir)
    assert [r["groups_unfrozen"] for r in history] == [1, 6, 6]
    assert history[0]["trainable_params"] < history[1]["trainable_params"] == history[1]["total_params"]


def test_freeze_bn_stats_trains_bn_weights_but_keeps_running_stats() -> None:
    model = _model()
    apply_strategy(model, "finetune", epoch=0)
    set_train_mode(model, freeze_bn_stats=True)
    assert all(not m.training for m in _bn_modules(model).values())
    stats = {k: v.clone() for k, v in _bn_buffers(model.state_dict()).items()}
    changed = _changed(model, _one_step(model))
    assert any(".bn" in n or "conv1.1" in n for n in changed)  # BN affine weights still learn
    after = _bn_buffers(model.state_dict())
    assert all(torch.equal(stats[k], after[k]) for k in stats)
