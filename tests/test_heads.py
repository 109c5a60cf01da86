"""MLP heads: building, hand-off between stages, what a probe trains, and a checkpoint round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stagewise.config import TrainConfig, build_config
from stagewise.errors import ConfigError, WeightsError
from stagewise.models import HeadSpec, LoadedWeights, build_model, load_state_dict_file
from stagewise.models.head import MLPHead, classifier_keys, head_param_names, install_mlp_head
from stagewise.training.strategies import (
    apply_strategy,
    coarse_groups,
    fine_layer_ids,
    set_train_mode,
)

CLASSES = ["alpha", "beta", "gamma"]
HIDDEN = {"fc.hidden.0.linear.weight", "fc.hidden.0.linear.bias"}
FINAL = {"fc.last.weight", "fc.last.bias"}


def _incoming(model: nn.Module, class_ids: list[str]) -> LoadedWeights:
    """What a pipeline hands the next stage: the weights and their class list."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return LoadedWeights(state_dict=state, source="stage 's1'", class_ids=list(class_ids),
                         class_names=list(class_ids), class_list_name="stage 's1'")


def _build(classes: list[str] = CLASSES, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("test_resnet", classes, **kw)


def test_mlp_head_sits_between_pooled_features_and_classifier() -> None:
    bundle = _build(head=HeadSpec(layers=(16, 8), activation="gelu", dropout=0.2))
    fc = bundle.model.fc
    assert isinstance(fc, MLPHead) and bundle.head.hidden == "new"
    assert [(b.linear.in_features, b.linear.out_features) for b in fc.hidden] == [(96, 16), (16, 8)]
    assert all(isinstance(b.act, nn.GELU) and b.drop.p == 0.2 for b in fc.hidden)
    assert (fc.last.in_features, fc.last.out_features) == (8, 3)
    assert classifier_keys(bundle.model) == ["fc.last.weight", "fc.last.bias"]
    assert bundle.model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert not isinstance(_build().model.fc, MLPHead)  # no head_layers: the linear head as before


def test_torchvision_heads_of_every_form_take_an_mlp() -> None:
    from torchvision.models import VisionTransformer

    spec = HeadSpec(layers=(8,))
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16,
                            mlp_dim=16, num_classes=3)
    install_mlp_head(vit, spec)  # heads.head
    assert isinstance(vit.heads.head, MLPHead) and vit(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    for name, path in (("tv:shufflenet_v2_x0_5", "fc"), ("tv:mobilenet_v3_small", "classifier.3"),
                       ("tv:squeezenet1_1", "classifier.1")):
        model = build_model(name, CLASSES, head=spec).model.eval()
        assert isinstance(model.get_submodule(path), MLPHead), name
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3), name
    # SqueezeNet classifies with a 1x1 conv: its hidden layers are 1x1 convs, the same MLP per pixel.
    assert isinstance(model.classifier[1].hidden[0].linear, nn.Conv2d)


def test_head_keys_are_validated_in_the_config() -> None:
    cfg = TrainConfig(data="unused", head_layers=[512], head_activation="silu", head_dropout=0.1)
    assert HeadSpec.from_mapping(cfg.resolved()) == HeadSpec(layers=(512,), activation="silu", dropout=0.1)
    assert HeadSpec.from_mapping({"architecture": "resnet18"}) == HeadSpec()  # an older model.json
    with pytest.raises(ConfigError, match="head_activation: unknown activation 'swish'; choose one of relu, gelu, silu"):
        build_config({"data": "unused", "head_layers": [8], "head_activation": "swish"})
    with pytest.raises(ConfigError, match="set head_layers"):
        build_config({"data": "unused", "head_dropout": 0.1})
    with pytest.raises(ConfigError, match=r"head_layers\[0\]"):
        build_config({"data": "unused", "head_layers": [0]})


def test_handoff_carries_hidden_layers_and_matches_rows_by_class() -> None:
    spec = HeadSpec(layers=(16,))
    first = _build(head=spec).model
    bundle = _build(["gamma", "delta", "alpha"], seed=1, incoming=_incoming(first, CLASSES), head=spec)
    model = bundle.model
    assert (bundle.head.mode, bundle.head.kept, bundle.head.hidden) == ("match", 2, "kept")
    assert bundle.head.describe().endswith("; hidden layers kept")
    assert torch.equal(model.fc.hidden[0].linear.weight, first.fc.hidden[0].linear.weight)
    for new_row, old_row in ((0, 2), (2, 0)):
        assert torch.equal(model.fc.last.weight[new_row], first.fc.last.weight[old_row])
    assert not any("unexpected" in n or "missing" in n for n in bundle.load_notes)


def test_handoff_resets_hidden_layers_of_other_shapes() -> None:
    first = _build(head=HeadSpec(layers=(16,))).model
    bundle = _build(incoming=_incoming(first, CLASSES), head=HeadSpec(layers=(8,)))
    # The final layer reads the new hidden features: its old rows would mean nothing.
    assert (bundle.head.mode, bundle.head.kept) == ("reset", 0)
    assert bundle.head.hidden.startswith("new (incoming shapes differ: fc.hidden.0.linear.weight (16, 96)")
    with pytest.raises(WeightsError, match="'keep' needs the incoming hidden layers"):
        _build(incoming=_incoming(first, CLASSES), head=HeadSpec(layers=(8,)), head_mode="keep")
    linear = _build().model
    bundle = _build(incoming=_incoming(linear, CLASSES), head=HeadSpec(layers=(8,)))
    assert bundle.head.hidden == "new (stage 's1' has none)" and bundle.head.kept == 0
    assert "hidden layers new (stage 's1' has none)" in bundle.head.describe()
    # Head tensors of another layout are the head's business, not "unexpected" backbone tensors.
    back = _build(incoming=_incoming(first, CLASSES))
    assert back.head.mode == "reset" and back.head.hidden is None
    assert not any("unexpected" in n for n in bundle.load_notes + back.load_notes)


def test_probe_trains_the_whole_head_including_hidden_layers() -> None:
    model = _build(head=HeadSpec(layers=(16,))).model
    assert coarse_groups(model)[-1] == head_param_names(model)
    assert set(head_param_names(model)) == HIDDEN | FINAL
    ids = fine_layer_ids(model)
    assert {ids[n] for n in HIDDEN | FINAL} == {max(ids.values())}
    apply_strategy(model, "probe", epoch=0)
    set_train_mode(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == HIDDEN | FINAL
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == HIDDEN | FINAL


@pytest.mark.parametrize("name", ["test_resnet", "tv:mobilenet_v3_small"])
def test_saved_model_rebuilds_with_the_same_logits(name: str, tmp_path: Path) -> None:
    """What predict does: rebuild from model.json's keys, load strictly, same logits."""
    spec = HeadSpec(layers=(16, 8), activation="silu", dropout=0.3)
    torch.manual_seed(0)
    model = build_model(name, CLASSES, head=spec).model.eval()
    nn.init.normal_(model.get_submodule(classifier_keys(model)[0].rsplit(".", 1)[0]).weight)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "best.safetensors"))
    meta = {"architecture": name, "class_ids": CLASSES, **spec.as_dict()}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))

    meta = json.loads((tmp_path / "model.json").read_text())
    torch.manual_seed(1)
    rebuilt = build_model(meta["architecture"], meta["class_ids"], head=HeadSpec.from_mapping(meta)).model
    rebuilt.load_state_dict(load_state_dict_file(tmp_path / "best.safetensors").state_dict, strict=True)
    # As a later stage's starting weights: every row and the hidden layers come back.
    handed = build_model(name, CLASSES, weights=str(tmp_path / "best.safetensors"), head=spec)
    assert (handed.head.kept, handed.head.hidden) == (3, "kept")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = model(x)
        assert torch.equal(rebuilt.eval()(x), want)
        assert torch.equal(handed.model.eval()(x), want)


def test_an_mlp_head_trains_in_a_stage_and_loads_for_prediction(tmp_path) -> None:
    import json

    import stagewise
    from conftest import make_image_folder, tiny_config

    data = make_image_folder(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "run", strategy="probe", epochs=1, head_layers=[16],
                      head_activation="gelu", head_dropout=0.1)
    result = stagewise.train(cfg, reporter="quiet")
    card = json.loads((result.run_dir / "model.json").read_text())
    assert (card["head_layers"], card["head_activation"], card["head_dropout"]) == ([16], "gelu", 0.1)
    clf = stagewise.load(result.run_dir)
    files = sorted(str(p) for p in (data / "val").rglob("*.png"))
    probs = torch.tensor([p.probability for p in clf.predict(files)])
    assert len(probs) == len(files) and torch.all(probs > 0)
