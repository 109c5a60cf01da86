"""Stage set-up, shared by everything that trains (a stage, lr_find, compare's cells):
config -> dataset -> model -> loaders, optimizer, schedule, loss on Accelerate.

It writes nothing: the run folder is the stage's business (stage.py). Anything that must see the
same network, data and trainable parameters as a stage's first epoch builds them here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.aliases import apply_aliases
from ..config.schema import TrainConfig, build_config
from ..config.yaml_loader import load_yaml
from ..data import (
    AugmentPlan,
    DatasetIndex,
    ImageDataset,
    Preprocess,
    build_transform,
    load_dataset,
    make_loader,
    resolve_preprocess,
)
from ..data.cache import attach_cache
from ..data.decode import attach_decoders
from ..data.folder import load_split, resplit
from ..data.identities import (
    EXPECTED,
    check_groups,
    check_identities,
    read_identities,
    shared_identities,
)
from ..data.loader import m_per_class_order
from ..data.progressive import EpochTransforms, progressive_values, randaugment
from ..data.resize import size_schedule
from ..data.shard_sampler import shard_sampler
from ..data.subset import take_subset
from ..data.verify import check_decodable, skipped_in
from ..errors import ConfigError
from ..kinds import Unfreezing, strategy, task
from ..models import (
    EmbeddingSpec,
    HeadSpec,
    LoadedWeights,
    ModelBundle,
    build_model,
    embedding_head,
    module_bundle,
)
from ..ranking import require_faiss, require_metrics
from ..runfolder import CONFIG, split_file
from .distill import Teacher, attach_teacher
from .embedding import EmbedCriterion
from .features import (
    FeatureDataset,
    HeadOnFeatures,
    check_features_supported,
    extract,
    has_feature_head,
)
from .loop import LoopParts
from .optim import Schedule, create_optimizer, lr_factor, scaled
from .progress import Reporter, progress_of
from .runtime import make_accelerator
from .strategies import Trainable, apply_strategy, coarse_groups, set_train_mode

# Keys a resumed run may change without changing its result.
RESUME_FREE = {"num_workers", "out", "wandb_log_model", "verify", "keep_last", "requeue_signal",
               "notes"}  # verify: a resume re-applies its saved split; notes: for people


def coerce_config(config: TrainConfig | dict | str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Accept a TrainConfig, a dict, a YAML path, or keyword arguments."""
    if isinstance(config, TrainConfig):
        data = config.model_dump()
    elif isinstance(config, (str, Path)):
        data = load_yaml(Path(config))
    else:
        data = dict(config or {})
    data.update(overrides)
    return build_config(data, source=str(config) if isinstance(config, (str, Path)) else "config")


def resume_config(run_dir: Path, given: dict[str, Any]) -> TrainConfig:
    """The saved config of `run_dir`; explicitly given keys must agree with it."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"resume: {path} not found; is {run_dir} a stagewise run folder?")
    saved = load_yaml(path)
    # Runs saved before `decoder:` existed decoded every image in full: resume them that way.
    saved.setdefault("decoder", "pil")
    saved_cfg = build_config(saved, source=str(path))
    # In stagewise's own keys, as config.yaml is: `--set learning_rate=...` is compared as `lr`.
    try:
        given = apply_aliases(given)
    except ValueError as exc:  # an alias beside its key, with another value
        raise ConfigError(f"command line: {exc}") from None
    asked = build_config({**saved, **given}, source="command line")
    before, after = saved_cfg.resolved(), asked.resolved()
    diffs = [f"{k}: {before[k]!r} -> {after[k]!r}" for k in given
             if k not in RESUME_FREE and before.get(k) != after.get(k)]
    if diffs:
        raise ConfigError(
            f"resuming would change the run in {run_dir}: " + "; ".join(diffs)
            + ". Resume with the saved settings, or start a new run in another folder"
        )
    return asked


@dataclass(frozen=True)
class Given:
    """What a caller passes as Python objects instead of names (`stagewise.train(model=module,
    data=(train_ds, val_ds))`): the index of its datasets (data/objects.py) and its network,
    with the name of its classifier when the last Linear is not it (models/user.py)."""

    index: DatasetIndex | None = None
    model: nn.Module | None = None
    head: str | None = None
    notes: tuple[str, ...] = ()  # what the log should say about them (set-up prints them)


@dataclass
class StageSetup:
    """A stage ready for its first step: what it reads, what it trains, how."""

    cfg: TrainConfig
    index: DatasetIndex
    bundle: ModelBundle
    pre: Preprocess
    parts: LoopParts
    sampler: Any  # the training loader's EpochSampler (set per epoch, skips on resume)
    network: nn.Module  # the whole network as prepared (DDP-wrapped with several processes)
    val_skipped: int = 0  # val files skipped at indexing: counted in every bad_val_images
    val_shared: list[str] | None = None  # embed: val identities that are training identities
    val_predictions: Any = None  # the last validation pass's (index, class, confidence), 3 x N
    # Work done once before the first epoch because of how this stage trains (a probe's feature
    # extraction): counted in that epoch's wall_seconds, so a strategy's time is its whole cost.
    prepare_seconds: float = 0.0
    _groups: list[list[str]] | None = None

    def coarse_groups(self) -> list[list[str]]:
        """The strategy's layer groups (parameter names), as groups_total counts them."""
        if self._groups is None:
            self._groups = coarse_groups(self.model)
        return self._groups

    def train_size(self, epoch: int) -> int:
        """The image size the training images have in `epoch` (progressive resizing/learning)."""
        dataset = self.parts.train_loader.dataset
        schedule = getattr(dataset, "transform_for", None)
        return schedule.size(epoch) if schedule is not None else self.pre.image_size

    def progressive(self, epoch: int) -> dict[str, float]:
        """What progressive learning sets in `epoch` (knob -> value; {} without it)."""
        return epoch_values(self.cfg, epoch)

    @property
    def model(self) -> nn.Module:
        """The bare whole network: what is frozen, checkpointed and saved."""
        return self.parts.accelerator.unwrap_model(self.network)

    @property
    def eval_model(self) -> nn.Module:
        """What the validation loader feeds: the EMA copy when there is one; the head alone when
        the loaders hold cached features."""
        if self.parts.ema is not None:
            return self.parts.ema.module
        return self.parts.accelerator.unwrap_model(self.parts.model)

    @property
    def saved_model(self) -> nn.Module:
        """What best.safetensors holds: the whole network (its EMA copy when there is one)."""
        return self.parts.ema.module if self.parts.ema is not None else self.model


def load_index(cfg: TrainConfig, split_file: Path | None = None, progress: Any = False) -> DatasetIndex:
    """The dataset of `cfg`, with the train/val[/test] split of `split_file` when given (a
    resume), else re-split by `cfg.split` when set."""
    if task(cfg.task).embeds:
        return _load_identities(cfg, split_file, progress)
    index = load_dataset(cfg.data, cfg.format, cfg.val_fraction, cfg.seed, progress=progress,
                         verify=cfg.verify)
    if cfg.split is not None:
        # Also on a resume: it checks the layout, and load_split then restores the saved lists.
        index = resplit(index, cfg.split, cfg.seed)
    if split_file is not None and split_file.is_file():
        index = load_split(index, split_file)  # the subsets too: the split lists what was kept
    else:
        _take_subsets(cfg, index)
    # Arrays, whatever the path here (a re-split or an older split.json gives lists): loader
    # workers then share the parent's pages instead of copying a Path object per file.
    index.splits = {name: s.compact(index.root) for name, s in index.splits.items()}
    index.check()
    return index


def _take_subsets(cfg: TrainConfig, index: DatasetIndex) -> None:
    """`train_subset:`/`val_subset:` applied to the split (data.subset), in place."""
    for split, rule in (("train", cfg.train_subset), ("val", cfg.val_subset)):
        if rule is not None and split in index.splits:
            index.splits[split] = take_subset(index.splits[split], index.num_classes, rule.per_class,
                                              rule.total, cfg.seed, split)


def _load_identities(cfg: TrainConfig, split_file: Path | None, progress: Any) -> DatasetIndex:
    if cfg.format not in ("auto", "folder"):
        raise ConfigError(f"format: {cfg.format}: task: embed reads identity folders ({EXPECTED}); "
                          "use format: auto or folder")
    if cfg.train_subset is not None or cfg.val_subset is not None:
        raise ConfigError("train_subset/val_subset: task: embed holds out whole identities; make a "
                          "smaller identity folder instead")
    from ..data.progress import task

    with task(progress, f"indexing {cfg.data.name or cfg.data}") as advance:
        index = read_identities(cfg.data, cfg.val_fraction, cfg.seed, advance)
    if split_file is not None and split_file.is_file():
        index = load_split(index, split_file)
        check_identities(index)
    return index


def _check_val(index: DatasetIndex, rep: Reporter) -> int:
    """Decode every val image once before training (a few ms each): no usable one is an error
    now, not a 0.0 accuracy later; bad ones are named and left out of the metrics. A saved index
    did that once when it was built (`val_bad`), or was told not to (verify: none)."""
    if index.val_bad is not None:
        bad = index.val_bad
    else:
        bad = check_decodable(index, "val", progress=progress_of(rep))
    if bad:
        rep.message(f"warning: {len(bad)} val image(s) cannot be decoded and are left out of "
                    f"evaluation: {', '.join(list(bad)[:3])}")
    return len(bad)


def prepare_stage(
    cfg: TrainConfig, rep: Reporter, incoming: LoadedWeights | None = None,
    split_from: Path | None = None, teacher: Teacher | None = None, given: Given | None = None,
) -> StageSetup:
    """Data, model and loop parts for `cfg`, seeded; the strategy is applied per epoch by
    `start_epoch`. `split_from` is a run folder whose saved split is reused (a resume);
    `teacher` (built by runs/ from `cfg.teacher`) adds its soft targets to the loss; `given`
    holds the objects a caller passed instead of a data folder or a model name."""
    from accelerate.utils import set_seed

    given = given or Given()
    if task(cfg.task).embeds:  # optional packages, checked before anything is read or written
        require_faiss(), require_metrics()
    for note in given.notes:
        rep.message(note)
    index = given.index or load_index(cfg, split_file(split_from) if split_from is not None else None,
                                      progress_of(rep))
    shared = _check_identities(cfg, index, rep) if cfg.task == "embed" else None
    bad_val = _check_val(index, rep)
    if index.skipped:
        shown = ", ".join(index.skipped[:3])
        rep.message(f"warning: skipped {len(index.skipped)} unreadable image(s): {shown}")
    set_seed(cfg.seed)
    bundle = _network(cfg, index, incoming, given, rep)
    pre = resolve_preprocess(bundle.data_config, cfg.image_size, cfg.mean, cfg.std)
    _augment_notes(cfg, bundle.data_config, rep)
    accelerator = make_accelerator(cfg.precision, may_leave_unused(cfg))
    world = accelerator.num_processes
    rep.message(f"device {accelerator.device}, precision {accelerator.mixed_precision}, "
                f"{len(index.splits['train'])} train / {len(index.splits['val']) - bad_val} val images, "
                f"{index.num_classes} classes, {pre.image_size}px")
    if world > 1 or cfg.grad_accum > 1:
        rep.message(f"{world} process(es) x batch {cfg.batch_size} x grad_accum {cfg.grad_accum}: "
                    f"global batch {world * cfg.batch_size * cfg.grad_accum} per optimizer step")
    if cfg.lr_scale != "none":
        rep.message(f"lr_scale {cfg.lr_scale}: lr {cfg.lr:g} x {lr_factor(cfg, world):.4g} (global batch "
                    f"{world * cfg.batch_size * cfg.grad_accum} / {cfg.lr_reference_batch}) = "
                    f"{scaled(cfg, world).lr:.4g}")
    if cfg.progressive_resize is not None and hasattr(bundle.model, "patch_embed"):
        raise ConfigError(f"progressive_resize: {cfg.model} embeds fixed-size patches with a "
                          "position table for one image size; use it with a convolutional network")
    cache = resolve_cache(cfg, accelerator.num_processes, bundle.model)
    if cache != cfg.cache:
        rep.message(f"cache: {cache} (auto: " + ("a probe without augmentation trains its head on "
                    "backbone features computed once, exactly)" if cache == "features" else
                    "no cache)"))
    parts, sampler, network = _loop_parts(cfg, index, bundle.model, pre, accelerator, cache,
                                          progress_of(rep))
    prepare_seconds = 0.0
    if cache == "features":
        prepare_seconds = _use_features(cfg, parts, network, rep)
        sampler = parts.train_loader.sampler
    if teacher is not None:
        attach_teacher(cfg, teacher, index.class_ids, pre, parts, rep, split_from)
    return StageSetup(cfg=cfg, index=index, bundle=bundle, pre=pre, parts=parts, sampler=sampler,
                      network=network, val_skipped=skipped_in(index, "val"), val_shared=shared,
                      prepare_seconds=prepare_seconds)


def _augment_notes(cfg: TrainConfig, data_config: dict[str, Any], rep: Reporter) -> None:
    """What a pasted torchvision list's ToTensor/Normalize become (data.augment.own_step_notes)."""
    from ..data.augment import output_size, own_step_notes

    default = resolve_preprocess(data_config, cfg.image_size)  # the model's own mean/std
    for note in own_step_notes(cfg.augment, cfg.model, default.mean, default.std):
        rep.message(note)
    crop = output_size(cfg.augment)
    if crop is not None and crop != default.image_size:
        rep.message(f"warning: augment: the last crop makes {crop} px training images, but "
                    f"evaluation and inference use image_size {default.image_size}; leave out "
                    "image_size (the crop sets it) or the crop's size (image_size sets it)")
    if cfg.train_subset is not None or cfg.val_subset is not None:
        rep.message(f"subset (seeded, stratified): train {_subset_text(cfg.train_subset)}, "
                    f"val {_subset_text(cfg.val_subset)}")


def _subset_text(subset: Any) -> str:


    return "all" if subset is None else subset.describe()
def _network(cfg: TrainConfig, index: DatasetIndex, incoming: LoadedWeights | None, given: Given,
             rep: Reporter) -> ModelBundle:
    """The stage's network: built by name with its starting weights, or the module passed in;
    where the weights came from is said (random init loudly)."""
    bundle = module_bundle(given.model, index.class_ids, given.head, cfg.image_size) \
        if given.model is not None else build_model(
        cfg.model, index.class_ids, weights=cfg.weights, head_mode=cfg.head, incoming=incoming,
        drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, image_size=cfg.image_size,
        class_names=index.class_names, head=HeadSpec.from_mapping(cfg.model_dump()),
        embedding=EmbeddingSpec.from_mapping(cfg.model_dump()) if task(cfg.task).embeds else None,
    )
    for note in bundle.load_notes:
        rep.message(note)
    if cfg.weights_auto:  # what `weights: auto` found (models/auto.py); random init said loudly
        rep.message(f"weights: auto -> {cfg.weights_auto}" if cfg.weights else
                    f"warning: weights: auto found no pretrained weights for {cfg.model}, so it "
                    f"starts from RANDOM INIT ({cfg.weights_auto.removeprefix('none: ')}); pass a "
                    "weights file, or go online once, for transfer learning")
    rep.message(bundle.head.describe())
    if strategy(cfg.strategy).uses_weights and not cfg.weights and incoming is None and given.model is None:
        rep.message(f"warning: strategy '{cfg.strategy}' without weights starts from random init")
    return bundle


def _check_identities(cfg: TrainConfig, index: DatasetIndex, rep: Reporter) -> list[str]:
    """An embed stage's groups and held-out identities; returns the validation identities that
    are training identities too (the retrieval metrics are then not held out: said, not refused)."""
    check_groups(index, cfg.m_per_class)
    shared = shared_identities(index)
    if shared:
        every = len(set(index.splits["val"].labels))
        rep.message(f"warning: {len(shared)} of the {every} validation identities are training "
                    f"identities too ({', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}): "
                    "val_map and recall@k measure identities the loss trained on, not held-out "
                    "ones; give val/ other identities (or drop it: val_fraction holds some out)")
    return shared


def resolve_cache(cfg: TrainConfig, world: int, model: nn.Module) -> str:
    """What `cache: auto` means for this stage; other values are checked and kept."""
    if cfg.cache == "features":
        check_features_supported(cfg, world, model)
    if cfg.cache != "auto":
        return cfg.cache
    # A teacher needs the images (config/schema.py refuses `cache: features` with one).
    exact = strategy(cfg.strategy).head_only and not cfg.teacher and not AugmentPlan.from_mapping(cfg.model_dump()).active
    # train_bn trains the backbone's BatchNorm and drop_path is off while extracting: not exact.
    simple = not (cfg.mixup or cfg.cutmix or cfg.ema or cfg.progressive_resize or cfg.progressive
                  or cfg.train_bn
                  or cfg.drop_path_rate) and world == 1 and has_feature_head(model)
    return "features" if exact and simple else "none"


def _use_features(cfg: TrainConfig, parts: LoopParts, network: nn.Module, rep: Reporter) -> float:
    """Swap the image loaders for loaders of backbone features and the network for its head;
    returns the seconds the extraction took."""
    model = parts.accelerator.unwrap_model(network)
    views = cfg.feature_views or 1
    plan = AugmentPlan.from_mapping(cfg.model_dump())
    if plan.active and not cfg.feature_views:
        rep.message("warning: cache: features without feature_views trains on the un-augmented "
                    f"view; augmentation '{plan.describe()}' is not applied (set feature_views: K)")
    start = time.perf_counter()
    images = {}
    val_images = parts.val_loader.dataset
    assert isinstance(val_images, ImageDataset), "set-up gives image loaders before features"
    for name, n in (("train_loader", views), ("val_loader", 1)):
        loader = getattr(parts, name)
        dataset = loader.dataset
        assert isinstance(dataset, ImageDataset)
        if name == "train_loader" and not cfg.feature_views:
            dataset = ImageDataset(dataset.samples, val_images.transform, cfg.seed, seeded=False)
        images[name] = len(dataset)
        feats, bad = extract(model, dataset, n, loader.batch_size or 1, loader.num_workers,
                             parts.accelerator.device, cfg.channels_last)
        setattr(parts, name, make_loader(FeatureDataset(feats, dataset.samples, bad),
                                         loader.batch_size or 1, name == "train_loader", cfg.seed,
                                         0, drop_last=loader.drop_last,
                                         m_per_class=cfg.m_per_class if name == "train_loader" else None))
    seconds = time.perf_counter() - start
    rep.message(f"features: {views} view(s) of {images['train_loader']} train and "
                f"{images['val_loader']} val images extracted once in {seconds:.1f}s")
    parts.model = HeadOnFeatures(model, cfg.drop_rate).to(parts.accelerator.device)
    parts.channels_last = False
    return seconds


def may_leave_unused(cfg: TrainConfig) -> bool:
    """Whether some epoch trains only part of the network (DDP's `find_unused_parameters`)."""
    plan = Unfreezing(cfg.freeze_epochs, cfg.unfreeze_every,
                      tuple(cfg.unfreeze_at) if cfg.unfreeze_at is not None else None)
    return strategy(cfg.strategy).may_leave_unused(plan) or bool(cfg.freeze)


def start_epoch(setup: StageSetup, epoch: int) -> Trainable:
    """Freeze/unfreeze by the strategy for `epoch` (0-based) and set train/eval modes.

    The one place that decides what an epoch trains: a stage calls it before each epoch and
    lr_find before its sweep, so a sweep covers exactly the first epoch's parameters.
    """
    cfg = setup.cfg
    trainable = apply_strategy(setup.model, cfg.strategy, epoch, cfg.freeze, cfg.train_bn,
                               cfg.unfreeze_every, cfg.unfreeze_at, cfg.freeze_epochs)
    set_train_mode(setup.parts.model, cfg.train_bn, cfg.freeze_bn_stats)
    values = setup.progressive(epoch)
    if "mixup" in values and setup.parts.mixup is not None:
        setup.parts.mixup.mixup_alpha = values["mixup"]
        # timm's Mixup refuses to draw with every alpha at 0: switch it off for such epochs.
        setup.parts.mixup.mixup_enabled = values["mixup"] > 0 or cfg.cutmix > 0
    if "drop_rate" in values:
        set_drop_rate(setup.model, values["drop_rate"])
    return trainable


def epoch_values(cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """Progressive learning's values for 0-based `epoch` ({} when the stage has none)."""
    if cfg.progressive is None:
        return {}
    values = progressive_values(cfg.progressive.ranges(), cfg.progressive.stages, cfg.epochs)
    return values[min(epoch, len(values) - 1)]


def set_drop_rate(model: nn.Module, rate: float) -> None:
    """Dropout before the classifier: timm networks read `drop_rate` in forward_head, others
    (ViTs) keep an nn.Dropout as `head_drop`."""
    found = False
    if isinstance(getattr(model, "drop_rate", None), (int, float)):
        setattr(model, "drop_rate", rate)  # noqa: B010 - nn.Module's typed __setattr__ takes tensors
        found = True
    head_drop = getattr(model, "head_drop", None)
    if isinstance(head_drop, nn.Dropout):
        head_drop.p = rate
        found = True
    if not found:
        raise ConfigError(f"progressive.drop_rate: {type(model).__name__} has no classifier dropout "
                          "to set (timm's drop_rate or head_drop); remove drop_rate from progressive")


def _datasets(cfg: TrainConfig, index: DatasetIndex, pre: Preprocess, cache: str,
              progress: Any) -> tuple[ImageDataset, ImageDataset]:
    plan = AugmentPlan.from_mapping(cfg.model_dump())
    train_ds = ImageDataset(index.splits["train"], build_transform(pre, plan, True), cfg.seed,
                            seeded=plan.active, seed_numpy=plan.uses_numpy)
    if cfg.progressive_resize is not None:
        ramp = cfg.progressive_resize
        sizes = size_schedule(pre.image_size, cfg.epochs, ramp.start, ramp.finish)
        train_ds.transform_for = EpochTransforms(pre, [(s, plan) for s in sizes])
    elif cfg.progressive is not None:
        values = [epoch_values(cfg, e) for e in range(cfg.epochs)]
        per_epoch = [(int(v.get("image_size", pre.image_size)),
                      randaugment(plan, v["randaugment_magnitude"]) if "randaugment_magnitude" in v
                      else plan) for v in values]
        train_ds.transform_for = EpochTransforms(pre, per_epoch)
        train_ds.seed_numpy = train_ds.seed_numpy or any(p.uses_numpy for _, p in per_epoch
                                                         if isinstance(p, AugmentPlan))
    val_ds = ImageDataset(index.splits["val"], build_transform(pre, "none", False), cfg.seed, seeded=False)
    if cache == "disk" and index.layout == "shards":
        raise ConfigError(f"cache: disk keys image files by their stat and content; {cfg.data} is a "
                          "shard folder: use cache: memory (small data) or none")
    if cache in ("memory", "disk"):  # cached features are made from the images themselves
        attach_cache([train_ds, val_ds], "memory" if cache == "memory" else "disk", pre,
                     progress=progress)
    return train_ds, val_ds


def _loop_parts(
    cfg: TrainConfig, index: DatasetIndex, model: nn.Module, pre: Preprocess, accelerator: Any,
    cache: str, progress: Any = False,
) -> tuple[LoopParts, Any, nn.Module]:
    from timm.utils import ModelEmaV3

    train_ds, val_ds = _datasets(cfg, index, pre, cache, progress)
    attach_decoders({"train": train_ds, "val": val_ds}, cfg.decoder, pre)
    rank, world = accelerator.process_index, accelerator.num_processes
    pin = accelerator.device.type == "cuda"
    # The sampler pads every rank to the same count (runs of m_per_class may repeat images).
    per_rank = -(-len(train_ds.samples if not cfg.m_per_class else
                      m_per_class_order(train_ds.samples.labels, cfg.m_per_class, 0)) // world)
    # Mixup pairs images and BatchNorm cannot train on one image: drop a last batch that small.
    small_tail = bool(cfg.mixup or cfg.cutmix or _mixes(cfg)) or per_rank % cfg.batch_size == 1
    train_loader = make_loader(train_ds, cfg.batch_size, True, cfg.seed, cfg.num_workers,
                               drop_last=small_tail and per_rank > cfg.batch_size,
                               rank=rank, world=world, pin_memory=pin, m_per_class=cfg.m_per_class,
                               sampler=shard_sampler(index, train_ds.samples, cfg, rank, world))
    if hasattr(val_ds, "indexed"):  # sample indices: the report's grid reuses the predictions
        val_ds.indexed = True
    val_loader = make_loader(val_ds, cfg.batch_size, False, cfg.seed, cfg.num_workers,
                             rank=rank, world=world, pin_memory=pin)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = create_optimizer(model, scaled(cfg, world))
    schedule = Schedule(optimizer, cfg, math.ceil(len(train_loader) / cfg.grad_accum))
    mixup, criterion = _loss(cfg, index, model)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema) if cfg.ema else None
    parts = LoopParts(accelerator=accelerator, model=model, optimizer=optimizer, schedule=schedule,
                      criterion=criterion.to(accelerator.device), train_loader=train_loader,
                      val_loader=val_loader, num_classes=index.num_classes, mixup=mixup, ema=ema,
                      grad_clip=cfg.grad_clip, grad_accum=cfg.grad_accum,
                      channels_last=cfg.channels_last)
    return parts, train_loader.sampler, model


def _loss(cfg: TrainConfig, index: DatasetIndex, model: nn.Module) -> tuple[Any, Any]:
    """(mixup or None, criterion): mixed targets are soft, so they need a soft-target loss; an
    embed stage's criterion is its embedding head's metric loss."""
    head = embedding_head(model)
    if head is not None:
        return None, EmbedCriterion(head)
    if cfg.mixup or cfg.cutmix or _mixes(cfg):
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                      label_smoothing=cfg.label_smoothing, num_classes=index.num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(weight=_class_weights(cfg, index), label_smoothing=cfg.label_smoothing)


def _class_weights(cfg: TrainConfig, index: DatasetIndex) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "balanced":
        counts = torch.tensor(index.splits["train"].counts(index.num_classes), dtype=torch.float)
        return counts.sum() / (len(counts) * counts.clamp(min=1))
    if len(cfg.class_weights) != index.num_classes:
        raise ConfigError(
            f"class_weights: {len(cfg.class_weights)} values for {index.num_classes} classes "
            f"({', '.join(index.class_ids[:10])})"
        )
    return torch.tensor(cfg.class_weights, dtype=torch.float)


def _mixes(cfg: TrainConfig) -> bool:
    """Progressive learning grows mixup from its first value: the Mixup object must exist."""
    return cfg.progressive is not None and cfg.progressive.mixup is not None
