"""torchvision's classification models: their state dicts load whole and give torchvision's logits.

Each architecture is built by torchvision, randomly initialised, saved as a `.pth` state dict,
then loaded through `build_model` as a user's `--weights` file would be.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import get_model, get_model_weights

from stagewise.config import TrainConfig
from stagewise.errors import WeightsError
from stagewise.models import build_model, load_state_dict_file, resolve_model_name, tv
from stagewise.models.build import _load_backbone
from stagewise.models.head import head_param_names
from stagewise.models.tv import layout_hint, torchvision_names
from stagewise.training.optim import param_groups
from stagewise.training.strategies import (
    apply_strategy,
    coarse_groups,
    fine_layer_ids,
    set_train_mode,
)

NUM_CLASSES = 10
# The user's classes: a reordered subset of the file's, so the new head's rows come by class id.
USER_CLASSES = ["c7", "c2", "c5"]
ROWS = [7, 2, 5]

# Smallest input each architecture takes (32 px otherwise): AlexNet's and Inception's strided
# stems, MaxViT's 7x7 attention windows at stride 32, ViT-H's 14 px patches.
MIN_SIZE = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "vit_h_14": 42}
# How torchvision builds these for its published weights (random init here instead).
REF_KWARGS = {"googlenet": {"transform_input": True, "aux_logits": True, "init_weights": True},
              "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": True}}
# Over 100M parameters, each with a smaller sibling of the same torchvision class checked here:
# building, saving and reloading them took 2-31 s each (150 s for all 80 on a shared 2-core
# machine). STAGEWISE_ALL_TORCHVISION=1 checks them too.
_BIG = ("regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf", "vit_h_14", "vit_l_16", "vit_l_32",
        "convnext_large", "efficientnet_v2_l", "wide_resnet101_2", "vgg13", "vgg13_bn", "vgg16",
        "vgg16_bn", "vgg19", "vgg19_bn")
SKIP = {} if os.environ.get("STAGEWISE_ALL_TORCHVISION") else {
    n: "over 100M parameters, a smaller sibling is checked; STAGEWISE_ALL_TORCHVISION=1 runs it"
    for n in _BIG}
# Names timm also uses for the very same network (same tensor names, same logits): they stay timm's.
TIMM_SAME = ("resnet", "resnext", "wide_resnet", "densenet", "inception_v3")


def _size(name: str) -> int:
    return MIN_SIZE.get(name, 32)


def _reference(name: str) -> torch.nn.Module:
    kwargs = dict(REF_KWARGS.get(name, {}))
    if name.startswith("vit_"):
        kwargs["image_size"] = _size(name)
    model = get_model(name, weights=None, num_classes=NUM_CLASSES, **kwargs).eval()
    # Some families start their classifier at zero (ViT); random rows make every logit count.
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    torch.nn.init.normal_(last.weight, std=0.1)
    return model


def _torchvision_config(name: str) -> dict:
    t = get_model_weights(name).DEFAULT.transforms()
    return {"mean": t.mean, "std": t.std}


def _normalise(image: torch.Tensor, config: dict) -> torch.Tensor:
    """Each side sees the image as its own preprocessing would: timm's inception_v3 folds
    torchvision's `transform_input` into its mean and std of 0.5."""
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    return (image - mean) / std


def _stagewise_name(name: str) -> str:
    """The plain name where it means this network, else tv:name (timm's efficientnet_b0 differs)."""
    resolved = resolve_model_name(name)
    return resolved if resolved.startswith("tv:") or name.startswith(TIMM_SAME) else f"tv:{name}"


def _params() -> list:
    return [pytest.param(n, marks=pytest.mark.skip(reason=SKIP[n])) if n in SKIP else n
            for n in torchvision_names()]


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A RAM-backed folder where there is one: a VGG's state dict is half a gigabyte."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm) as d:
        yield Path(d)


@pytest.mark.parametrize("name", _params())
def test_torchvision_state_dict_loads_whole_with_the_same_logits(name: str, fast_dir: Path) -> None:
    torch.manual_seed(0)
    ref = _reference(name)
    path = fast_dir / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    (fast_dir / "classes.json").write_text(json.dumps([f"c{i}" for i in range(NUM_CLASSES)]))
    size = _size(name)
    bundle = build_model(_stagewise_name(name), USER_CLASSES, weights=str(path),
                         image_size=size if name.startswith("vit_") else None)
    # Every tensor but the classifier (whose rows come by class id) and the training-time
    # auxiliary classifiers, which torchvision drops as well when it loads these weights.
    skip = set(head_param_names(ref))
    body = [k for k in ref.state_dict() if k not in skip and not k.startswith(tv.AUX_PREFIXES)]
    assert bundle.load_notes[0] == f"weights: loaded {len(body)}/{len(body)} backbone tensors from {path}"
    assert all("auxiliary" in n for n in bundle.load_notes[1:]), bundle.load_notes
    assert bundle.head.kept == len(USER_CLASSES)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = ref(_normalise(image, _torchvision_config(name)))[:, ROWS]
        got = bundle.model.eval()(_normalise(image, bundle.data_config))
    scale = float(want.abs().max())
    assert got.shape == (1, len(USER_CLASSES)) and scale > 0
    # A 3-row classifier sums in another order than the 10-row one: equal to float rounding.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale)


def test_model_names_resolve_to_one_library() -> None:
    assert resolve_model_name("mobilenet_v2") == "tv:mobilenet_v2"  # torchvision only
    assert resolve_model_name("shufflenet_v2_x1_0") == "tv:shufflenet_v2_x1_0"
    assert resolve_model_name("efficientnet_v2_s") == "tv:efficientnet_v2_s"  # timm: efficientnetv2_s
    assert resolve_model_name("resnet18") == "resnet18"  # both: timm's, the same network
    assert resolve_model_name("efficientnet_b0") == "efficientnet_b0"  # both: timm's, another layout
    assert resolve_model_name("tv:efficientnet_b0") == "tv:efficientnet_b0"
    with pytest.raises(ValueError, match=r"unknown torchvision model 'tv:mobilenet_v9'.*tv:mobilenet_v2"):
        resolve_model_name("tv:mobilenet_v9")
    with pytest.raises(ValueError, match=r"unknown model 'squeezenet1_2'.*squeezenet1_1"):
        resolve_model_name("squeezenet1_2")


def test_a_torchvision_file_under_timms_name_builds_torchvisions_network(fast_dir: Path) -> None:
    # It used to be refused with the fix in the message (use tv:...); now the fix is applied.
    torch.manual_seed(0)
    path = fast_dir / "efficientnet_b0.pth"
    torch.save(_reference("efficientnet_b0").state_dict(), path)
    bundle = build_model("efficientnet_b0", USER_CLASSES, weights=str(path))
    assert bundle.architecture == "tv:efficientnet_b0"
    assert "torchvision's layout of efficientnet_b0" in bundle.load_notes[0]


@pytest.mark.parametrize("name", [n for n in torchvision_names()
                                  if timm.is_model(n) and not n.startswith(TIMM_SAME)])
def test_every_shared_name_with_another_timm_layout_builds_torchvisions(name: str) -> None:
    from stagewise.models.build import _architecture_for
    from stagewise.models.weights import LoadedWeights

    with torch.device("meta"):
        state = get_model(name, num_classes=NUM_CLASSES, **REF_KWARGS.get(name, {})).state_dict()
    assert _architecture_for(name, LoadedWeights(state_dict=state, source="file")) == f"tv:{name}"


@pytest.mark.parametrize("name", [n for n in torchvision_names()
                                  if timm.is_model(n) and not n.startswith(TIMM_SAME)])
def test_every_shared_name_with_another_timm_layout_gets_the_hint(name: str) -> None:
    # vgg11 used to load 16 of 20 tensors and drop fc6/fc7 without a word.
    with torch.device("meta"):
        state = get_model(name, num_classes=NUM_CLASSES, **REF_KWARGS.get(name, {})).state_dict()
    assert f"use model: tv:{name}" in (layout_hint(name, state) or "")


# RegNet computes its widths with tensors, so it cannot be built on the meta device: its two
# smallest stand in for the family.
GROUP_NAMES = [n for n in torchvision_names() if not n.startswith("regnet")] + \
    ["regnet_x_400mf", "regnet_y_400mf"]


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_layer_groups_run_stem_to_head_in_forward_order(name: str) -> None:
    device = "cpu" if name.startswith("regnet") else "meta"
    with torch.device(device):
        model = tv.create(name, tv.build_kwargs(name, 3))
    params = [n for n, _ in model.named_parameters()]
    groups = coarse_groups(model)
    assert sorted(n for g in groups for n in g) == sorted(params)
    assert groups[-1] == head_param_names(model) and groups[0][0] == params[0]
    assert len(groups) >= 4, groups  # stem, stages, head: something to unfreeze gradually
    ids = fine_layer_ids(model)
    order = [ids[n] for n in params]
    assert order == sorted(order), "fine layer ids must follow the forward order"
    assert len(set(order)) >= len(groups) and set(ids[n] for n in groups[-1]) == {max(order)}


def _tiny_vit() -> torch.nn.Module:
    """torchvision's ViT class at toy size (vit_b_16 is 86M parameters)."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=16,
                             mlp_dim=32, num_classes=3)


STRATEGY_MODELS = ["tv:resnet18", "tv:mobilenet_v2", "tv:efficientnet_b0", "tv:squeezenet1_1", "tiny_vit"]


def _strategy_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = _tiny_vit() if name == "tiny_vit" else build_model(name, USER_CLASSES).model
    # Running statistics of real data, as pretrained weights have: with the initial ones (mean 0,
    # var 1) a random EfficientNet's features vanish to 1e-14 once BatchNorm is in eval mode.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32))
    return model


def _step(model: torch.nn.Module) -> set[str]:
    """One SGD step on random data; the names of the parameters it changed."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("name", STRATEGY_MODELS)
def test_probe_trains_only_the_torchvision_head(name: str) -> None:
    model = _strategy_model(name)
    head = set(head_param_names(model))
    apply_strategy(model, "probe", epoch=0)
    set_train_mode(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    stats = [m.running_mean.clone() for m in bns]
    assert _step(model) == head
    assert all(not m.training for m in bns)
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, bns, strict=True))


@pytest.mark.parametrize("name", STRATEGY_MODELS)
def test_gradual_and_layer_decay_on_torchvision_groups(name: str) -> None:
    model = _strategy_model(name)
    groups = coarse_groups(model)
    for epoch in range(3):
        info = apply_strategy(model, "gradual", epoch=epoch, unfreeze_every=1)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert info.groups_unfrozen == epoch + 1
        assert trainable == {n for g in groups[-(epoch + 1):] for n in g}
    cfg = TrainConfig(data="unused", model="test_resnet", lr=0.1, layer_decay=0.5)
    lrs = {n: g["lr"] for g in param_groups(model, cfg) for n in g["param_names"]}
    assert {lrs[n] for n in groups[-1]} == {0.1}
    body = [lrs[n] for g in groups[:-1] for n in g]
    assert lrs[groups[0][0]] == min(body) < max(body) == pytest.approx(0.05)


def test_train_and_predict_with_a_torchvision_model(tmp_path: Path) -> None:
    """Through the trainer: model.json names tv:..., and loading it rebuilds torchvision's network."""
    import stagewise
    from conftest import make_image_folder, tiny_config

    data = make_image_folder(tmp_path / "data", per_class=4)
    result = stagewise.train(tiny_config(data, tmp_path / "run", model="mobilenet_v3_small",
                                         strategy="gradual", epochs=2), reporter="quiet")
    assert json.loads((result.run_dir / "model.json").read_text())["architecture"] == "tv:mobilenet_v3_small"
    assert [r["groups_unfrozen"] for r in result.history] == [1, 2]
    clf = stagewise.load(result.run_dir, device="cpu")
    image = next((data / "val" / "alpha").iterdir())
    assert clf.predict([image], top_k=1)


def test_regularisers_map_to_torchvision_options() -> None:
    model = build_model("tv:mobilenet_v3_small", USER_CLASSES, drop_rate=0.3).model
    assert [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)] == [0.3]
    model = build_model("tv:efficientnet_b0", USER_CLASSES, drop_path_rate=0.1).model
    rates = [m.p for m in model.modules() if type(m).__name__ == "StochasticDepth"]
    assert 0.05 < max(rates) <= 0.1  # torchvision scales it up with depth to this
    # 0 means off, as for timm, not torchvision's default of 0.2.
    model = build_model("tv:efficientnet_b0", USER_CLASSES).model
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    with pytest.raises(WeightsError, match="no classifier dropout.*head_dropout"):
        build_model("tv:resnet18", USER_CLASSES, drop_rate=0.1)


def test_hub_weights_come_with_the_imagenet_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models._api import WeightsEnum

    torch.manual_seed(0)
    state = get_model("mobilenet_v3_small", num_classes=1000).state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: state)
    # head: match copies a partial match (left unset, 1 of 2 classes would start a fresh head)
    bundle = build_model("tv:mobilenet_v3_small", ["n01440764", "mine"], weights="hub", head_mode="match")
    assert bundle.head.kept == 1 and "ImageNet-1k" in bundle.head.source  # tench, by its wnid
    assert torch.equal(bundle.model.classifier[3].weight[0], state["classifier.3.weight"][0])

    def offline(self, *a, **k):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError, match="Offline\\?.*--weights"):
        build_model("tv:mobilenet_v3_small", ["a"], weights="hub")


def test_a_partial_file_gets_torchvisions_init_for_the_rest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = _reference("mobilenet_v3_small").state_dict()
    del state["features.1.block.0.0.weight"]
    torch.save(state, tmp_path / "partial.pth")
    bundle = build_model("tv:mobilenet_v3_small", USER_CLASSES, weights=str(tmp_path / "partial.pth"))
    assert "1 missing: features.1.block.0.0.weight" in " ".join(bundle.load_notes)
    # Not built on the meta device then: nothing uninitialised is left in the model.
    weight = bundle.model.features[1].block[0][0].weight.detach()
    assert torch.isfinite(weight).all() and 0 < float(weight.std()) < 10


def test_mnasnet_reloads_from_safetensors_without_module_versions(tmp_path: Path) -> None:
    """Checkpoints and best.safetensors carry no module versions, which MNASNet insists on."""
    from safetensors.torch import save_file

    model = build_model("tv:mnasnet0_5", USER_CLASSES).model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    again = build_model("tv:mnasnet0_5", USER_CLASSES).model.eval()
    again.load_state_dict(load_state_dict_file(tmp_path / "m.safetensors").state_dict, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))


def test_vit_position_embedding_follows_the_image_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(_tiny_vit().state_dict(), tmp_path / "vit.pth")  # 32 px: 2x2 patches
    with pytest.raises(WeightsError, match="not a multiple of its patch size 16"):
        build_model("tv:vit_b_16", USER_CLASSES, image_size=40)
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=48, patch_size=16, num_layers=3, num_heads=2, hidden_dim=16,
                              mlp_dim=32, num_classes=3)
    incoming = load_state_dict_file(tmp_path / "vit.pth")
    notes = _load_backbone(model, incoming, "tv:vit_tiny")
    n = len(model.state_dict()) - 2
    assert notes == [f"weights: loaded {n}/{n} backbone tensors from {incoming.source}"]
    assert model.encoder.pos_embedding.shape == (1, 10, 16)  # resampled from 2x2 to 3x3 patches
