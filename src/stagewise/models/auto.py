"""`weights: auto` (the default): the named model's pretrained weights when they can be had, random
init only when they cannot, and a record of which.

Looked for in this order, each cheap and offline except the last:
1. a local file `<tag>.safetensors` in `$STAGEWISE_WEIGHTS` (default ~/.cache/stagewise/weights),
   e.g. tf_efficientnet_lite0.in1k.safetensors;
2. the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub)
   holding the model's timm weights (torchvision's: torch hub's cache of checkpoints);
3. the hub itself, when online: not when `HF_HUB_OFFLINE` is set, and only after a TCP
   connection to the hub's host opened within `CONNECT_TIMEOUT` (once per process), so a
   machine without network falls back to random init in about a second, not after a download's
   retries and timeouts.
The environment is read at each call (not at import, as huggingface_hub does), so a test can
point it at a temporary cache.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from . import tv
from .user import is_user_architecture

log = logging.getLogger("stagewise")

CONNECT_TIMEOUT = 1.0  # seconds for the one connectivity check
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_online: dict[str, bool] = {}


@dataclass(frozen=True)
class AutoWeights:
    """What `weights: auto` became: the `weights:` value to use and how it was found."""

    weights: str | None  # a file, "hub", or None (random init)
    found: str  # "file: ...", "hf-cache: ...", "torch-cache: ...", "hub: ..." or "none: <why>"

    @property
    def random(self) -> bool:
        return self.weights is None


def local_weights_dir() -> Path:
    return Path(os.environ.get("STAGEWISE_WEIGHTS", Path.home() / ".cache" / "stagewise" / "weights")).expanduser()


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads, as its environment variables say now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def online(url: str | None = None) -> bool:
    """Whether the hub (or `url`'s host) can be reached: never when HF_HUB_OFFLINE is set; else
    one TCP connection attempt per host and process, bounded by CONNECT_TIMEOUT."""
    if _offline():
        return False
    host = urlparse(url or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or ""
    if host not in _online:
        _online[host] = _reachable(host)
    return _online[host]


def _reachable(host: str) -> bool:
    """One TCP connection to `host`:443. In a daemon thread: the socket timeout does not bound
    the name lookup, which a misconfigured resolver can hang for tens of seconds."""
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    worker = threading.Thread(target=connect, daemon=True, name="stagewise-online-check")
    worker.start()
    worker.join(2 * CONNECT_TIMEOUT)
    return bool(answer and answer[0])


def cached_hub_file(repo_id: str) -> Path | None:
    """The cached weights file of a hub repository (its refs/main snapshot), or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in _HUB_FILES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()))
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def hub_repo(name: str) -> str | None:
    """The hub repository of a timm name (`resnet18`, `resnet18.a1_in1k`, `hf-hub:org/repo`)."""
    if name.startswith("hf-hub:"):
        return name[len("hf-hub:"):].split("@")[0]
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, allow_unregistered=False)
    return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None


def resolve_auto(name: str) -> AutoWeights:
    """What `weights: auto` means for the model called `name` (see the module docstring)."""
    if is_user_architecture(name):
        return AutoWeights(None, "none: a module passed in keeps its own weights")
    if tv.is_torchvision(name):
        return _torchvision(tv.base_name(name))
    base = name.split(".")[0]
    for stem in dict.fromkeys((name, _full_tag(name), base)):
        if stem and (local_weights_dir() / f"{stem}.safetensors").is_file():
            path = local_weights_dir() / f"{stem}.safetensors"
            return AutoWeights(str(path), f"file: {path}")
    repo = hub_repo(name)
    if repo is None:
        return AutoWeights(None, f"none: timm has no pretrained weights for {name}")
    cached = cached_hub_file(repo)
    if cached is not None:
        return AutoWeights("hub", f"hf-cache: {repo} ({cached})")
    if online():
        return AutoWeights("hub", f"hub: {repo} (downloaded)")
    why = "HF_HUB_OFFLINE is set" if _offline() else "the hub cannot be reached"
    return AutoWeights(None, f"none: {repo} is not in the Hugging Face cache ({hf_cache_dir()}) "
                             f"and {why}")


def _full_tag(name: str) -> str | None:
    """`resnet18` -> `resnet18.a1_in1k`: the tag timm loads by default."""
    if name.startswith("hf-hub:"):
        return None
    repo = hub_repo(name)
    return repo.split("/")[-1] if repo else None


def _torchvision(base: str) -> AutoWeights:
    """torchvision's default ImageNet weights: in torch hub's checkpoint cache, or downloadable."""
    import torch
    from torchvision.models import get_model_weights

    try:
        url = get_model_weights(base).DEFAULT.url
    except (ValueError, AttributeError, KeyError):
        return AutoWeights(None, f"none: torchvision has no pretrained weights for {base}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if cached.is_file():
        return AutoWeights("hub", f"torch-cache: {cached}")
    if online(url):
        return AutoWeights("hub", f"hub: {url} (downloaded)")
    return AutoWeights(None, f"none: {cached.name} is not in torch hub's cache and "
                             f"{'HF_HUB_OFFLINE is set' if _offline() else 'the network cannot be reached'}")
