"""Publish an exported model to the Hugging Face Hub, and load one back.

`push` exports the run (hf_export) and uploads the folder with huggingface_hub; the token comes
from where huggingface_hub looks for it (HF_TOKEN, or `hf auth login`'s stored token). `download`
turns `hf-hub:user/repo[@revision]` into a local snapshot folder (huggingface_hub's cache, which
HF_HUB_OFFLINE=1 reads without a network), and `timm_card` describes a folder that holds only
timm's config.json (a timm model from the Hub) as a model.json would, so `stagewise.load` reads
both kinds with one loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StagewiseError, WeightsError
from ..runfolder import MODEL_CARD, ModelCard

PREFIX = "hf-hub:"
# The files of an export folder (hf_export writes them, push uploads them). They are named here,
# not in hf_export, so that loading a model (find_artifact -> hub) imports no export code.
CONFIG_JSON = "config.json"  # timm's pretrained config
WEIGHTS = "model.safetensors"
README = "README.md"  # the model card
FILES = (CONFIG_JSON, WEIGHTS, README, MODEL_CARD)
DEFAULT_DIR = "hf"  # `export --format hf` without --out: RUN/hf/


class PushError(StagewiseError):
    """The upload could not be made (no token, no permission, no network)."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    folder: Path
    files: list[tuple[str, int]]  # (name, bytes) uploaded, or that would be with dry_run
    private: bool
    dry_run: bool
    url: str | None = None  # the commit's URL on the Hub (None for a dry run)


def push(folder: Path, repo_id: str, private: bool = False, dry_run: bool = False,
         token: str | None = None, commit_message: str | None = None) -> PushResult:
    """Upload the export folder `folder` to the model repo `repo_id` (created if missing).

    Example:
        >>> push(Path("runs/pets/hf"), "me/pets-resnet18", private=True)  # doctest: +SKIP
    """
    check_repo_id(repo_id)
    files = [(name, (folder / name).stat().st_size) for name in FILES if (folder / name).is_file()]
    if dry_run:
        return PushResult(repo_id, folder, files, private, dry_run=True)
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with "
                        "write access), or check what would be uploaded with --dry-run")
    api = HfApi(token=token, library_name="stagewise")
    try:
        # create_repo returns the full id, with the user's namespace when `repo_id` had none.
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                   allow_patterns=[name for name, _ in files],
                                   commit_message=commit_message or f"Upload {folder.name} (stagewise)")
    except HfHubHTTPError as exc:
        raise PushError(f"upload to {repo_id} failed: {_first_line(exc)}; check that the token may "
                        "write to this namespace (hf auth whoami)") from None
    except OSError as exc:  # no network, DNS, TLS: requests' errors are OSErrors
        raise PushError(f"upload to {repo_id} failed: {_first_line(exc)}") from None
    return PushResult(repo, folder, files, private, dry_run=False, url=getattr(commit, "commit_url", None))


def check_repo_id(repo_id: str) -> None:
    """A Hub model id (`name` or `user/name`), refused with the rule before any work."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"repo id {repo_id!r}: {_first_line(exc)} (e.g. your-name/pets-resnet18)") from None


def is_hub_ref(path: str | Path) -> bool:
    return str(path).startswith(PREFIX)


def download(ref: str) -> Path:
    """The local snapshot folder of `hf-hub:user/repo[@revision]` (downloaded, or from the cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = ref.removeprefix(PREFIX).partition("@")
    check_repo_id(repo_id)
    try:
        folder = snapshot_download(repo_id, revision=revision or None,
                                   allow_patterns=[*FILES, "pytorch_model.bin"])
    except LocalEntryNotFoundError:
        raise WeightsError(f"{ref}: not in the local Hugging Face cache and the Hub cannot be reached "
                           "(HF_HUB_OFFLINE set, or no network); download it once while online") from None
    except HfHubHTTPError as exc:
        raise WeightsError(f"{ref}: {_first_line(exc)} (a private repo needs HF_TOKEN or "
                           "`hf auth login`)") from None
    return Path(folder)


def timm_card(folder: Path) -> ModelCard | None:
    """A model card from timm's config.json in `folder` (None when there is none): the
    architecture, the classes (label_names, else their indices) and the preprocessing."""
    path = folder / CONFIG_JSON
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        return None
    try:
        config = json.loads(path.read_text())
        pre = config.get("pretrained_cfg", config)
        arch, num = str(config["architecture"]), int(config.get("num_classes") or pre["num_classes"])
        size = int(pre.get("input_size", [3, 224, 224])[-1])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise WeightsError(f"{path}: not a timm config.json ({type(exc).__name__}: {exc})") from None
    names = config.get("label_names") or pre.get("label_names")
    ids = [str(n) for n in names] if isinstance(names, list) and len(names) == num else [str(i) for i in range(num)]
    preprocess: dict[str, Any] = {"image_size": size, "mean": list(pre.get("mean", (0.485, 0.456, 0.406))),
                                  "std": list(pre.get("std", (0.229, 0.224, 0.225))),
                                  "interpolation": pre.get("interpolation", "bilinear"),
                                  "crop_pct": float(pre.get("crop_pct", 0.875))}
    return ModelCard(architecture=arch, class_ids=ids, preprocess=preprocess, weights=WEIGHTS,
                     strategy=None, data=None)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
