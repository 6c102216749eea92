"""Regenerate the committed Python stubs in onnxcam/proto/ from protos/onnxcam/v1/*.proto.

    python protos/generate.py           # rewrite the stubs
    python protos/generate.py --check   # exit 1 if the committed stubs differ from a fresh build

protoc names imports after the proto path (``from onnxcam.v1 import ...``), which would clash with
the ``onnxcam`` package; the stubs live flat in ``onnxcam.proto``, so those imports are rewritten.
Needs grpcio-tools (a dev dependency); the stubs themselves need only grpcio and protobuf.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = "onnxcam/v1"
OUT_DIR = ROOT / "onnxcam" / "proto"
IMPORT_PATTERN = re.compile(r"^from onnxcam\.v1 import (\w+)", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def build() -> dict[str, str]:
    """Run protoc (bundled with grpcio-tools) into a temporary folder; file name -> stub text."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}"] + [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        stubs = {}
        for path in sorted((Path(tmp) / PROTO_PACKAGE).iterdir()):
            stubs[path.name] = IMPORT_PATTERN.sub(r"from onnxcam.proto import \1", path.read_text())
    return stubs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    args = parser.parse_args(argv)
    stubs = build()
    if args.check:
        stale = [name for name, text in stubs.items()
                 if not (OUT_DIR / name).exists() or (OUT_DIR / name).read_text() != text]
        if stale:
            from importlib.metadata import version

            print(f"stale stubs in {OUT_DIR}: {', '.join(stale)}; run python protos/generate.py (the stubs "
                  f"record the generator's version: grpcio-tools {version('grpcio-tools')} is installed)",
                  file=sys.stderr)
            return 1
        print("stubs are current")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in stubs.items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
