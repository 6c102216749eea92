"""``onnxcam visualize-class``: the image that maximises a class's score, from a server or a model folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnxcam import class_model, client_options
from onnxcam.cli_errors import CliError, check_writable_file, rpc_failure, write_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize-class", help="class model visualisation: the input that maximises a class's score",
        description="Gradient ascent on the input from the zero image to maximise a class's logit minus an L2 "
                    "penalty (Simonyan et al. 2014), on ONNX Runtime only: through a running server "
                    "(VisualizeClass RPC) or locally from an exported model folder (--model-dir).")
    parser.add_argument("--class", dest="target", type=int, required=True, help="class index to visualise")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="model name on the server (with --server)")
    where.add_argument("--model-dir", type=Path, help="an exported model folder, run here without a server")
    parser.add_argument("--server", default="localhost:50051", help="host:port (default localhost:50051)")
    parser.add_argument("--out", type=Path, default=Path("class_model.png"), help="PNG to write")
    parser.add_argument("--steps", type=int, default=class_model.DEFAULT_STEPS,
                        help=f"ascent steps (default {class_model.DEFAULT_STEPS}, at most {class_model.MAX_STEPS})")
    parser.add_argument("--lr", type=float, default=class_model.DEFAULT_LEARNING_RATE,
                        help=f"step size, times g / mean|g| (default {class_model.DEFAULT_LEARNING_RATE})")
    parser.add_argument("--l2", type=float, default=class_model.DEFAULT_L2,
                        help=f"L2 weight lambda (default {class_model.DEFAULT_L2})")
    parser.add_argument("--jitter", type=int, default=0, help="random shift in pixels before each step (default 0)")
    parser.add_argument("--blur-sigma", type=float, default=0.0, help="Gaussian blur sigma in pixels (default off)")
    parser.add_argument("--blur-every", type=int, default=0, help="blur every this many steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter (default 0)")
    parser.add_argument("--timeout", type=float, default=None, help="deadline in seconds (default none)")
    client_options.add_arguments(parser)
    parser.set_defaults(handler=run)


def _print(progress: class_model.Progress) -> None:
    print(f"step {progress.step:5d}/{progress.steps}: score {progress.score:9.3f}  objective "
          f"{progress.objective:9.3f}  p {progress.probability:.4f}", file=sys.stderr, flush=True)


def _local(args: argparse.Namespace, options: class_model.Options) -> tuple[bytes, int, str, float]:
    import onnxruntime as ort

    from server.heatmaps import encode_png
    from server.model_info import load_model_info

    info = load_model_info(args.model_dir)
    if info.input_gradients_file is None:
        raise ValueError(f"{args.model_dir} has no input_gradients.onnx: re-export the model")
    if not 0 <= args.target < info.num_classes:
        raise ValueError(f"class {args.target} is out of range 0..{info.num_classes - 1}")
    session = ort.InferenceSession(str(info.input_gradients_file), providers=["CPUExecutionProvider"])
    image, history = class_model.visualize(class_model.session_gradient(session), (3, *info.input_size),
                                           args.target, options, on_progress=_print)
    pre = info.preprocess
    final = history[-1]
    return (encode_png(class_model.to_rgb(image, pre.mean, pre.std, pre.scale)), final.top1,
            info.labels[final.top1], final.probability)


def _remote(args: argparse.Namespace, options: class_model.Options) -> tuple[bytes, int, str, float]:
    from onnxcam.client import ExplainerClient
    from onnxcam.proto import explainer_pb2 as pb

    request = pb.VisualizeClassRequest(model=args.model, target=args.target, steps=options.steps,
                                       learning_rate=options.learning_rate, l2=options.l2, jitter=options.jitter,
                                       blur_sigma=options.blur_sigma, blur_every=options.blur_every, seed=options.seed)
    with ExplainerClient(args.server, timeout=args.timeout, **client_options.client_kwargs(args)) as client:
        for update in client.stub.VisualizeClass(request, timeout=args.timeout):
            _print(class_model.Progress(update.step, update.steps, update.score, update.objective,
                                        update.probability, update.top1))
            if update.image_png:
                return update.image_png, update.top1, update.top1_label, update.probability
    raise RuntimeError("the server ended the stream without an image")


def run(args: argparse.Namespace) -> int:
    import grpc

    check_writable_file(args.out, "--out")
    options = class_model.Options(steps=args.steps, learning_rate=args.lr, l2=args.l2, jitter=args.jitter,
                                  blur_sigma=args.blur_sigma, blur_every=args.blur_every, seed=args.seed)
    try:
        png, top1, label, probability = (_local if args.model_dir else _remote)(args, options)
    except grpc.RpcError as error:
        raise rpc_failure(error, args.server) from None
    except (OSError, ValueError, RuntimeError) as error:
        raise CliError(str(error)) from error
    write_file(args.out, png, "--out")
    print(f"wrote {args.out}: class {args.target}, p = {probability:.4f}; the model's top-1 for it is "
          f"class {top1} ({label})")
    return 0
