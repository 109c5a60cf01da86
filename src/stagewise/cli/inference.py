"""CLI commands `predict`, `evaluate`, `export`: parse, call the inference API, print. No logic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StagewiseError
from ..lock import refuse_if_running
from .deferred import defer

if TYPE_CHECKING:
    from ..inference import Evaluation

MODEL_HELP = "run folder, pipeline run folder, or a .safetensors file with model.json beside it"
PROGRESS_MIN_IMAGES = 64  # below this a bar only flickers


def add_parsers(sub: argparse._SubParsersAction) -> None:
    # Each command's flags are described by the inference modules (formats, TTA modes, splits),
    # which import torch: they are added when the command is used (cli/deferred.py).
    _predict_parser(sub)
    _evaluate_parser(sub)
    _export_parser(sub)


def _common(p: argparse.ArgumentParser) -> None:
    from ..inference.choices import TTA_HELP

    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--num-workers", type=int, default=None,
                   help="image decoding workers (default: from the core count)")
    p.add_argument("--tta", default=None, metavar="MODE",
                   help=f"test-time augmentation, probabilities averaged over the views: {TTA_HELP} "
                   "(flip: with the mirrored image; five_crop/ten_crop: crops of the resized image; "
                   "scales: resized by each factor, then center-cropped)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")


def _predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a trained model",
                       description="Classify image files, folders (searched recursively) and globs. "
                       "Unreadable files become error rows; exit 0 unless nothing could be read (2). "
                       "Several models make an ensemble (their softmax probabilities averaged): "
                       "`predict RUN_A RUN_B IMAGES...` (the first positional is always a model; "
                       "the ones after it are models while they are run folders or .safetensors "
                       "files) or `predict --model RUN_A --model RUN_B IMAGES...` (then every "
                       "positional is an image).")
    defer(p, _predict_arguments)


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    from ..inference.choices import OUTPUT_FORMATS as FORMATS

    _common(p)
    p.add_argument("--model", dest="models", type=Path, action="append", default=[],
                   help=f"a model ({MODEL_HELP}); repeat for an ensemble")
    p.add_argument("inputs", nargs="+", metavar="[MODEL ...] INPUT",
                   help="models, then image files, folders or globs (quote them: 'dir/**/*.jpg')")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per image")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table for people; json or csv on stdout for scripts")
    p.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..inference import expand_inputs, load_ensemble, predict_files
    from ..inference.output import failures, print_table, progress_bar, to_csv, to_json

    if args.top_k < 1 or args.batch_size < 1:
        raise StagewiseError("--top-k and --batch-size must be at least 1")
    models, inputs = split_models(args.models, args.inputs)
    clf = load_ensemble(models, device=args.device)
    entries = expand_inputs(inputs)
    show = not args.quiet and sys.stderr.isatty() and len(entries) >= PROGRESS_MIN_IMAGES
    with progress_bar(len(entries), "predict", show) as update:
        results = predict_files(clf, entries, args.top_k, args.batch_size, args.tta,
                                args.num_workers, on_progress=update)
    if args.format == "json":
        print(to_json(results, ", ".join(getattr(clf, "sources", [str(clf.source)]))))
    elif args.format == "csv":
        sys.stdout.write(to_csv(results, min(args.top_k, clf.num_classes)))
    else:
        from rich.console import Console

        print_table(results, Console())
    failed = failures(results)
    if failed == len(results):
        print(f"error: none of the {len(results)} input(s) could be read", file=sys.stderr)
        return 2
    if failed and not args.quiet:
        print(f"warning: {failed} of {len(results)} input(s) could not be read (see their error rows)",
              file=sys.stderr)
    return 0


def is_model_path(path: Path) -> bool:
    """A run folder, pipeline run folder or weights file; image folders hold neither file."""
    from ..runfolder import MANIFEST, MODEL_CARD

    if path.is_dir():
        return (path / MODEL_CARD).is_file() or (path / MANIFEST).is_file()
    return path.is_file() and path.suffix == ".safetensors"


def split_models(flagged: list[Path], positional: list[str]) -> tuple[list[Path], list[str]]:
    """Models and inputs of `predict`: with --model, every positional is an input; without, the
    first positional is a model, and so are the next ones while they look like model paths."""
    if flagged:
        return flagged, positional
    if len(positional) < 2:
        raise StagewiseError("predict needs a model and at least one image (or --model RUN)")
    n = 1
    while n < len(positional) - 1 and is_model_path(Path(positional[n])):
        n += 1
    return [Path(p) for p in positional[:n]], positional[n:]


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a trained model on a labelled image folder",
                       description="Top-1/top-5, per-class precision/recall/F1, confusion matrix and "
                       "calibration error, most-confused pairs and a top-losses grid; classes are "
                       "matched to the model's by id. Several models are scored as an ensemble "
                       "(mean softmax probability) and each on its own.")
    defer(p, _evaluate_arguments)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from ..inference.choices import SPLITS

    p.add_argument("model", type=Path, nargs="+", help=f"{MODEL_HELP}; several make an ensemble")
    _common(p)
    p.add_argument("--data", type=Path, required=True, help="image folder (train/val[/test] or classes)")
    p.add_argument("--split", choices=SPLITS, default="val",
                   help="which split to score (--retrieval: which split folder of a train/ val/ "
                   "layout of identities is searched)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file to write (a .md report goes beside it); default: in the model folder")
    p.add_argument("--retrieval", action="store_true",
                   help="re-identification instead: --data holds identity folders (searched leave-"
                   "one-out), train/ and val/ of them (--split picks one), or query/ and gallery/ "
                   "of them; recall@1/5/10, mAP, mAP@R, open-set "
                   "rejection (needs stagewise[retrieval])")
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..inference import evaluate, load_ensemble
    from ..inference.evaluation import EVAL_FILE, output_paths, top_losses_path
    from ..inference.output import progress_bar
    from ..runfolder import check_outputs

    if args.retrieval:
        return _evaluate_retrieval(args)
    clf = load_ensemble(args.model, device=args.device)
    prefix = "eval-ensemble" if len(args.model) > 1 else "eval"
    out = args.out or _beside(clf.source) / f"{prefix}-{args.data.resolve().name}-{args.split}.json"
    check_outputs([*output_paths(out), top_losses_path(out)], EVAL_FILE)  # before the work
    refuse_if_running(out.parent, "evaluate")
    show = not args.quiet and sys.stderr.isatty()
    with progress_bar(None, "evaluate", show) as update:
        result = evaluate(clf, args.data, args.split, args.batch_size, args.num_workers, args.tta,
                          on_progress=update)
    json_path, report = result.write(out)
    if not args.quiet:
        print(f"{args.split}: {result.images} images, top-1 {result.top1:.4f}, top-5 "
              f"{result.top5:.4f}, macro F1 {result.macro_f1:.4f}, ECE {result.ece:.4f}")
        _print_interpretation(result)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        grid = top_losses_path(json_path)
        print(f"wrote {json_path} and {report}" + (f" and {grid}" if grid.is_file() else ""))
    return 0


def _print_interpretation(result: Evaluation) -> None:
    """The ensemble's members and the most-confused pairs, as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result.members:
        table = Table(title="ensemble and its members", show_edge=False)
        table.add_column("model")
        table.add_column("top-1", justify="right")
        for m in result.members:
            table.add_row(m["model"], f"{m['top1']:.4f}")
        table.add_row("ensemble (mean probability)", f"{result.top1:.4f}")
        console.print(table)
    if result.most_confused:
        table = Table(title="most confused (true -> predicted)", show_edge=False)
        for name in ("true", "predicted", "count"):
            table.add_column(name, justify="right" if name == "count" else "left")
        for c in result.most_confused:
            table.add_row(c["true"], c["predicted"], str(c["count"]))
        console.print(table)


def _evaluate_retrieval(args: argparse.Namespace) -> int:
    from ..inference import load
    from ..inference.evaluation import EVAL_FILE, output_paths
    from ..inference.retrieval import require_faiss
    from ..inference.retrieval_eval import evaluate_retrieval, require_metrics
    from ..runfolder import check_outputs

    require_faiss()  # both before loading the model and embedding every image
    require_metrics()
    if len(args.model) > 1:
        raise StagewiseError("--retrieval evaluates one model; ensembles are for classification")
    clf = load(args.model[0], device=args.device)
    if args.tta and not args.quiet:
        print("note: --tta is not used by --retrieval (embeddings are of the image as given)",
              file=sys.stderr)
    out = args.out or _beside(clf.source) / f"retrieval-{args.data.resolve().name}.json"
    check_outputs(list(output_paths(out)), EVAL_FILE)  # before embedding every image
    refuse_if_running(out.parent, "evaluate")
    result = evaluate_retrieval(clf, args.data, args.batch_size, args.num_workers, split=args.split)
    json_path, report = result.write(out)
    if not args.quiet:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{result.mode}: {result.queries} queries, {result.gallery} gallery "
                      f"images, {result.identities} identities", show_edge=False)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in result.rows():
            table.add_row(name, value)
        Console().print(table)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"wrote {json_path} and {report}")
    return 0


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX, TorchScript or a Hugging Face folder",
                       description="Writes the model file and a .preprocess.json beside it, then "
                       "checks that the export reproduces PyTorch's logits within 1e-4. --format hf "
                       "writes a folder in timm's layout (config.json, model.safetensors, a model card "
                       "README.md, model.json) that timm.create_model('local-dir:DIR', pretrained=True) "
                       "loads; `stagewise push` uploads it.")
    defer(p, _export_arguments)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    from ..inference.choices import DEFAULT_OPSET
    from ..inference.choices import EXPORT_FORMATS as FORMATS

    p.add_argument("model", type=Path, help=MODEL_HELP)
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="onnx or torchscript: one model file; hf: a timm/Hugging Face Hub folder")
    p.add_argument("--out", type=Path, default=None,
                   help="file to write (hf: the folder) (default: in the model folder; hf: RUN/hf)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size, not just 1")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from ..inference import export, load

    result = export(load(args.model, device="cpu"), args.format, args.out, args.dynamic_batch,
                    args.opset)
    diff = f"max |logit difference| {result.max_abs_diff:.2e}" if result.checked else "not checked"
    if result.format == "hf":
        print(f"wrote {result.path}/ (config.json, model.safetensors, README.md, model.json); "
              f"publish it with: stagewise push {result.path} YOUR-NAME/MODEL-NAME")
    else:
        print(f"wrote {result.path} and {result.preprocess_path}")
    print(f"parity: {diff} ({result.note})")
    return 0


def _beside(source: Path | None) -> Path:
    """The folder of the model's weights, where results go by default (a model loaded from a
    command line always has a source file)."""
    return Path(source).parent if source is not None else Path.cwd()
