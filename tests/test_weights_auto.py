"""`weights: auto`, the default: pretrained weights from a local file or the Hugging Face cache
with the hub offline, random init (said and recorded) when there are none."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import stagewise
from conftest import tiny_config
from stagewise.config.schema import build_config
from stagewise.models import auto

LITE0 = "timm/tf_efficientnet_lite0.in1k"


def _fake_hf_cache(root: Path, weights: Path, repo: str = LITE0, rev: str = "0123abcd") -> Path:
    """The layout huggingface_hub writes: models--org--name/snapshots/<rev>/ and refs/main."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / rev).mkdir(parents=True)
    (folder / "snapshots" / rev / "model.safetensors").symlink_to(weights)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)
    return root


def test_auto_loads_the_pretrained_weights_from_the_hf_cache_offline(
        effnet_weights: Path, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_CACHE", str(_fake_hf_cache(tmp_path / "hf", effnet_weights)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    # No weights and no strategy given: auto finds the cached file, so the transfer default
    # (finetune, its first epoch the head alone) applies.
    config = tiny_config(image_folder, out, model="tf_efficientnet_lite0", epochs=1)
    result = stagewise.train(config, reporter="plain")
    printed = capsys.readouterr().out
    assert f"weights: auto -> hf-cache: {LITE0}" in printed
    assert "backbone tensors from hub:tf_efficientnet_lite0" in printed
    card = json.loads((out / "model.json").read_text())
    assert card["weights_from"].startswith(f"hf-cache: {LITE0}") and card["strategy"] == "finetune"
    assert result.history[-1]["groups_unfrozen"] == 1  # the head alone: the backbone is the file's
    trained, pretrained = load_file(str(out / "best.safetensors")), load_file(str(effnet_weights))
    assert trained["conv_stem.weight"].equal(pretrained["conv_stem.weight"])


def test_auto_finds_a_local_file(effnet_weights: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / effnet_weights.name).symlink_to(effnet_weights)
    monkeypatch.setenv("STAGEWISE_WEIGHTS", str(tmp_path / "w"))
    cfg = build_config({"data": "d", "model": "tf_efficientnet_lite0"})
    assert cfg.weights == str(tmp_path / "w" / effnet_weights.name)
    assert cfg.weights_auto == f"file: {cfg.weights}" and cfg.weights_source == "transfer"


def test_auto_with_nothing_to_load_is_random_init_said_and_recorded(
        image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    stagewise.train(tiny_config(image_folder, out, epochs=1), reporter="plain")
    assert "warning: weights: auto found no pretrained weights for test_resnet, so it starts from " \
           "RANDOM INIT" in capsys.readouterr().out
    card = json.loads((out / "model.json").read_text())
    assert card["weights_from"].startswith("none: timm/test_resnet.r160_in1k is not in the Hugging "
                                           "Face cache") and "HF_HUB_OFFLINE is set" in card["weights_from"]
    # From random init the default strategy is scratch, as it was before auto.
    assert card["strategy"] == "scratch"
    # Online allowed but the hub unreachable: one failed connection, then random init.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(auto, "_online", {})
    tries = []

    def refuse(address: tuple[str, int], timeout: float) -> socket.socket:
        tries.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    cfg = build_config({"data": "d", "model": "test_resnet"})
    cfg = build_config({"data": "d", "model": "test_resnet", "strategy": "probe"})
    assert cfg.weights is None and cfg.weights_auto.endswith("the hub cannot be reached")
    assert tries == [(("huggingface.co", 443), auto.CONNECT_TIMEOUT)]  # asked once per process


@pytest.mark.parametrize(("given", "expected"), [
    ({"strategy": "scratch"}, None), ({"weights": "none", "strategy": "probe"}, None),
    ({"strategy": "scratch", "weights_auto": "hf-cache: copied from another stage"}, None),
    ({"weights_source": "handoff"}, None), ({"weights": "x.safetensors"}, "x.safetensors"),
])
def test_auto_applies_only_where_pretrained_weights_fit(given: dict, expected: str | None) -> None:
    cfg = build_config({"data": "d", "model": "test_resnet", **given})
    assert cfg.weights == expected and cfg.weights_auto is None
