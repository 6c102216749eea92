"""The ``onnxcam`` command. Subcommands import their heavy modules lazily, so ``onnxcam serve``
runs on a machine without torch."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module with ``register(subparsers)``; each module keeps its top-level imports light.
SUBCOMMANDS: dict[str, str] = {
    "export": "exporter.cli",  # also registers `models build`
    "serve": "server.cli",
    "explain": "onnxcam.client_cli",
    "visualize-class": "onnxcam.visualize_cli",
    "demo": "onnxcam.demo",
    "evaluate": "onnxcam.evaluate_cli",
    "sanity-check": "onnxcam.sanity_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxcam", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and not module_name.startswith(error.name):
                raise
            continue  # a part of onnxcam that this installation does not ship
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party optimizers log every rewrite at INFO; only our own progress is wanted.
    logging.getLogger().handlers[0].addFilter(lambda record: record.name.startswith("onnxcam"))
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
