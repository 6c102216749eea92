"""The ``onnxcam`` command. Subcommands import their heavy modules lazily, so ``onnxcam serve``
runs on a machine without torch. Help texts are written for the terminal: no docstring markup."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn

from onnxcam import __version__, logging_setup
from onnxcam.cli_errors import CliError, missing_module_message, one_line

#: Set to 1 to see the traceback of an unexpected error (a bug to report) instead of its one line.
TRACEBACK_ENV = "ONNXCAM_TRACEBACK"

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


DESCRIPTION = ("Explain image classifiers: export a PyTorch model with its backward pass inside one ONNX graph, "
               "serve it over gRPC from ONNX Runtime (no torch needed), and ask for predictions with heatmaps.")


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's failure shape: the usage, then one line that starts with ``error:``."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def print_help_instead(parser: argparse.ArgumentParser) -> None:
    """A command group called without its subcommand prints its help (to stderr) and exits 2."""

    def handler(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="onnxcam", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"onnxcam {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    print_help_instead(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    # Timestamps and levels on every line; third-party libraries' warnings and errors, not their INFO chatter.
    logging_setup.configure(logging.WARNING if args.quiet else logging.INFO, getattr(args, "log_format", "text"))
    try:
        return int(args.handler(args) or 0)
    except CliError as error:
        return _fail(one_line(error), error.code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except ModuleNotFoundError as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        return _fail(missing_module_message(error), 2)
    except Exception as error:  # noqa: BLE001 - a bug still gets one line; the traceback on request
        if os.environ.get(TRACEBACK_ENV):
            raise
        return _fail(f"unexpected {type(error).__name__}: {one_line(error)} ({TRACEBACK_ENV}=1 shows the "
                     "traceback; please report it)", 1)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
