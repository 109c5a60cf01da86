"""Weights are loaded safely: safetensors and plain .pth, never code from a pickle."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import make_image_folder
from stagewise.errors import WeightsError
from stagewise.models import build_model, load_state_dict_file

CLASSES = ["alpha", "beta", "gamma"]


def _state(name: str = "test_resnet", seed: int = 0, classes: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=classes)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


class _SystemCall:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenCall:
    """Unpickling this creates `marker` through builtins.open."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_safetensors_round_trip(tmp_path: Path) -> None:
    state = _state()
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded = load_state_dict_file(tmp_path / "w.safetensors")
    assert set(loaded.state_dict) == set(state) and _same(loaded.state_dict, state, state)
    assert loaded.class_ids is None


def test_build_model_loads_backbone_from_safetensors(tmp_path: Path) -> None:
    state = _state(seed=5)
    save_file(state, str(tmp_path / "w.safetensors"))
    bundle = build_model("test_resnet", CLASSES, weights=str(tmp_path / "w.safetensors"))
    own = bundle.model.state_dict()
    body = [k for k in state if not k.startswith("fc.")]
    assert _same(own, state, body)
    assert bundle.head.mode == "reset"  # no class list beside the file: the head starts fresh
    assert any("loaded" in n and f"{len(body)}/{len(body)}" in n for n in bundle.load_notes)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_pth_checkpoint_wrappers_and_module_prefix(tmp_path: Path, wrapper: str) -> None:
    state = _state(seed=1)
    wrapped = {wrapper: {f"module.{k}": v for k, v in state.items()}, "epoch": 7, "best_acc": 0.5}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    loaded = load_state_dict_file(tmp_path / "ckpt.pth")
    assert set(loaded.state_dict) == set(state) and _same(loaded.state_dict, state, state)
    bundle = build_model("test_resnet", CLASSES, weights=str(tmp_path / "ckpt.pth"))
    assert _same(bundle.model.state_dict(), state, [k for k in state if not k.startswith("fc.")])


def test_compiled_model_prefix_is_stripped(tmp_path: Path) -> None:
    state = _state(seed=2)
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, tmp_path / "w.pt")
    assert set(load_state_dict_file(tmp_path / "w.pt").state_dict) == set(state)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", ["system", "open"])
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_without_running_code(tmp_path: Path, payload: str, writer: str) -> None:
    marker = tmp_path / "pwned"
    evil = _SystemCall(marker) if payload == "system" else _OpenCall(marker)
    content = {"state_dict": {"fc.weight": torch.zeros(3, 96)}, "extra": evil}
    path = tmp_path / "evil.pth"
    if writer == "torch":
        torch.save(content, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(content, fh)
    with pytest.raises(WeightsError) as info:
        load_state_dict_file(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "refused" in message and "safetensors" in message
    assert "weights_only` set to `False`" not in message  # never suggest the unsafe fallback


def test_wrong_architecture_is_a_clear_error(tmp_path: Path) -> None:
    save_file(_state("test_efficientnet"), str(tmp_path / "effnet.safetensors"))
    with pytest.raises(WeightsError, match="do not fit this architecture") as info:
        build_model("test_resnet", CLASSES, weights=str(tmp_path / "effnet.safetensors"))
    assert "--model" in str(info.value) and "effnet.safetensors" in str(info.value)


def test_missing_unexpected_and_mismatched_keys_are_reported(tmp_path: Path) -> None:
    state = _state(seed=3)
    del state["layer4.0.bn1.running_mean"]
    state["extra_block.weight"] = torch.zeros(2)
    state["layer1.0.bn1.bias"] = torch.zeros(5)
    save_file(state, str(tmp_path / "partial.safetensors"))
    bundle = build_model("test_resnet", CLASSES, weights=str(tmp_path / "partial.safetensors"))
    notes = "\n".join(bundle.load_notes)
    assert "1 missing: layer4.0.bn1.running_mean" in notes
    assert "1 unexpected: extra_block.weight" in notes
    assert "1 shape mismatch: layer1.0.bn1.bias (5,)" in notes
    assert torch.equal(bundle.model.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])


def test_head_rows_follow_class_ids_not_positions(tmp_path: Path) -> None:
    state = _state(seed=4)
    save_file(state, str(tmp_path / "w.safetensors"))
    (tmp_path / "w.classes.json").write_text(json.dumps(CLASSES))
    bundle = build_model("test_resnet", ["gamma", "delta", "alpha"],
                         weights=str(tmp_path / "w.safetensors"))
    fc = bundle.model.state_dict()["fc.weight"]
    assert bundle.head.mode == "match" and bundle.head.kept == 2
    assert torch.equal(fc[0], state["fc.weight"][2]) and torch.equal(fc[2], state["fc.weight"][0])
    assert not torch.equal(fc[1], state["fc.weight"][1])


@pytest.mark.parametrize(("name", "content", "match"), [
    ("missing.safetensors", None, "not found"),
    ("broken.safetensors", b"not a safetensors file", "not a readable safetensors"),
    ("weights.npz", b"x", "unknown weights format"),
    ("empty.pth", b"", "not a readable PyTorch"),
])
def test_unreadable_files(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        load_state_dict_file(tmp_path / name)


def test_cli_refuses_malicious_weights(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=2)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _state(), "hook": _SystemCall(marker)}, tmp_path / "evil.pth")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stagewise", "train", "--data", str(data), "--model", "test_resnet",
         "--weights", str(tmp_path / "evil.pth"), "--image-size", "32", "--epochs", "1",
         "--num-workers", "0", "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "evil.pth" in proc.stderr and "refused" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "history.jsonl").exists()
