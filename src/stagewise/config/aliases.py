"""The spellings of other tools' tutorials, as aliases of stage keys: one table, applied once.

A stage dict written the usual way (`mixed_precision: true`, `gradient_clipping: 1.0`,
`optimizer: sgd_momentum`, `scheduler: cosine_warmup`, `description: ...`) means something
stagewise has under another name. `apply_aliases` rewrites such data into stagewise's own keys
before the schema validates it, so YAML files, `--set`, pipeline stages and the Python API all
accept them, and config.yaml records only the canonical keys (a resumed run reads those).

Every alias is a row of `ALIASES` (key spellings) or `VALUE_ALIASES` (values of `optimizer:` and
`scheduler:`); `stagewise keys` and docs/cli.md list them. Given beside its canonical key with
another value, an alias is an error: one of the two would be silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import defaults

NOTES = "notes"  # the stage key that keeps free-text notes (description, dataset, classes)


@dataclass(frozen=True)
class Alias:
    """A key spelling: what it means (for docs and hints) and the canonical keys it sets."""

    spelling: str
    canonical: str  # the key it sets (for hints: "did you mean 'x' (an alias of y)?")
    meaning: str
    convert: Callable[[Any], Any] = lambda value: value


def _precision(value: Any) -> Any:
    """true: reduced precision where it is fast (precision: auto); false: fp32; Accelerate's
    names ("no", "fp16", "bf16") as themselves."""
    if value is True:
        return "auto"
    if value is False or value == "no":
        return "fp32"
    return value  # anything else: the schema names the valid precisions


ALIASES: dict[str, Alias] = {a.spelling: a for a in (
    Alias("mixed_precision", "precision", "true: precision auto (bf16/fp16 on CUDA, fp32 on CPU); "
          "false or no: fp32; fp16/bf16: that precision", _precision),
    Alias("gradient_clipping", "grad_clip", "gradient norm clipping threshold"),
    Alias("max_grad_norm", "grad_clip", "gradient norm clipping threshold (Hugging Face)"),
    Alias("clip_grad", "grad_clip", "gradient norm clipping threshold (timm)"),
    Alias("learning_rate", "lr", "base learning rate"),
    Alias("num_epochs", "epochs", "epochs of the stage"),
    Alias("gradient_accumulation_steps", "grad_accum", "batches per optimizer step"),
    Alias("pct_start", "one_cycle_pct_start", "one_cycle: fraction of the steps spent rising"),
    Alias("warmup_pct", "one_cycle_pct_start", "one_cycle: fraction of the steps spent rising"),
    Alias("description", NOTES, "kept as notes.description in config.yaml; no effect on training",
          lambda value: {"description": value}),
    Alias("dataset", NOTES, "kept as notes.dataset (a name for people; the images come from data:)",
          lambda value: {"dataset": value}),
    Alias("classes", NOTES, "kept as notes.classes: the classes come from the data folder's class "
          "folders, and a stage's head is matched to them by class id",
          lambda value: {"classes": value}),
)}


@dataclass(frozen=True)
class ValueAlias:
    """A value of `optimizer:` or `scheduler:` that means that key's value plus other keys (set
    only where the stage leaves them out)."""

    key: str
    spelling: str
    value: str
    also: dict[str, Any]
    meaning: str


VALUE_ALIASES: dict[tuple[str, str], ValueAlias] = {(a.key, a.spelling): a for a in (
    ValueAlias("optimizer", "sgd_momentum", "sgd", {"momentum": 0.9}, "SGD with momentum 0.9"),
    ValueAlias("optimizer", "sgd_nesterov", "sgd", {"momentum": 0.9, "nesterov": True},
               "SGD with Nesterov momentum 0.9"),
    ValueAlias("scheduler", "cosine_annealing", "cosine", {}, "cosine"),
    ValueAlias("scheduler", "onecycle", "one_cycle", {}, "one_cycle"),
    ValueAlias("scheduler", "linear", "polynomial", {"power": 1.0},
               "linear decay to 0 (polynomial, power 1)"),
)}
# `scheduler: NAME_warmup` for any scheduler NAME (cosine_warmup, exponential_warmup,
# linear_warmup...): NAME with `warmup_epochs` where the stage gives none.
WARMUP_SUFFIX = "_warmup"


def warmup_epochs_for(epochs: Any) -> float:
    """The warmup a `*_warmup` schedule gets by default: defaults.ALIAS_WARMUP_EPOCHS, at most
    a tenth of the stage's epochs (a 3-epoch stage warms up for 0.3 of an epoch)."""
    total = epochs if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) else 10
    return min(defaults.ALIAS_WARMUP_EPOCHS, round(total / 10, 3))


def apply_aliases(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every alias replaced by the keys it means (a new dict; `data` is unchanged).

    Raises ValueError (worded from the canonical key, as the schema's own checks are) when an
    alias and its canonical key are both given with different values.

    Example:
        >>> apply_aliases({"gradient_clipping": 1.0, "optimizer": "sgd_momentum"})
        {'grad_clip': 1.0, 'optimizer': 'sgd', 'momentum': 0.9}
    """
    out = dict(data)
    for spelling in [k for k in data if k in ALIASES]:
        alias = ALIASES[spelling]
        value = alias.convert(out.pop(spelling))
        if alias.canonical == NOTES:
            given = out.get(NOTES)
            # `notes:` written out wins over a spelling that lands in it.
            out[NOTES] = {**value, **(given if isinstance(given, dict) else {})}
        else:
            _set(out, alias.canonical, value, f"{spelling}: {data[spelling]!r}")
    for key in ("optimizer", "scheduler"):
        _expand_value(out, key)
    return out


def _expand_value(out: dict[str, Any], key: str) -> None:
    given = out.get(key)
    if not isinstance(given, str):
        return
    name = given.strip().lower()
    found = VALUE_ALIASES.get((key, name))
    also: dict[str, Any] = dict(found.also) if found else {}
    if found is None and key == "scheduler" and name.endswith(WARMUP_SUFFIX):
        base = name.removesuffix(WARMUP_SUFFIX)
        found = VALUE_ALIASES.get((key, base))
        name = found.value if found else base
        also = {**(dict(found.also) if found else {}),
                "warmup_epochs": warmup_epochs_for(out.get("epochs"))}
    elif found is not None:
        name = found.value
    else:
        return
    out[key] = name
    for extra, value in also.items():
        out.setdefault(extra, value)  # the stage's own value wins (`momentum: 0.95` beside it)


def _set(out: dict[str, Any], key: str, value: Any, written: str) -> None:
    if key in out and out[key] != value:
        raise ValueError(f"{key}: given twice, as {key}: {out[key]!r} and as {written} (an alias "
                         f"of {key}); keep one")
    out[key] = value


def describe_aliases() -> list[dict[str, str]]:
    """Every alias as a row (spelling, means), for `stagewise keys` and the docs."""
    rows = [{"spelling": f"{a.spelling}:", "means": f"{a.canonical}: {a.meaning}"}
            for a in ALIASES.values()]
    rows += [{"spelling": f"{a.key}: {a.spelling}",
              "means": f"{a.key}: {a.value}" + "".join(f", {k}: {v}" for k, v in a.also.items())
              + f" ({a.meaning})"} for a in VALUE_ALIASES.values()]
    rows.append({"spelling": f"scheduler: NAME{WARMUP_SUFFIX}",
                 "means": f"scheduler: NAME, warmup_epochs: {defaults.ALIAS_WARMUP_EPOCHS:g} (at most "
                 "a tenth of the epochs) unless given (cosine_warmup, exponential_warmup, ...)"})
    return rows
