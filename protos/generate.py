"""Regenerate the committed Python stubs in onnxcam/proto/ from the .proto files under protos/.

    python protos/generate.py           # rewrite the stubs
    python protos/generate.py --check   # exit 1 if the committed stubs differ from a fresh build

Two sets of protos, both written flat into ``onnxcam.proto``:

- ``protos/onnxcam/v1``: onnxcam's own contract. protoc names imports after the proto path
  (``from onnxcam.v1 import ...``), which would clash with the ``onnxcam`` package, so those imports
  are rewritten.
- ``protos/inference``: Triton's Open Inference Protocol, vendored (protos/inference/README.md). Its
  stubs are rewritten to register in a descriptor pool of their own (``onnxcam.proto.inference_pool``):
  tritonclient registers the same ``inference.*`` names in protobuf's default pool, and two different
  versions of one name there make the second import fail.

Needs grpcio-tools (a dev dependency, pinned: the stubs record its version); the stubs themselves need
only grpcio and protobuf.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_DIR = ROOT / "onnxcam" / "proto"
POOL_IMPORT = "from onnxcam.proto import inference_pool as _inference_pool\n"


@dataclass(frozen=True)
class ProtoSet:
    """protoc's include root, the package folder under it, and the rewrites its stubs need."""

    include: Path
    package: str
    own_pool: bool

    def files(self) -> list[Path]:
        return sorted((self.include / self.package).glob("*.proto"))

    def rewrite(self, text: str) -> str:
        if self.package:
            text = re.sub(rf"^from {re.escape(self.package.replace('/', '.'))} import (\w+)",
                          r"from onnxcam.proto import \1", text, flags=re.MULTILINE)
        else:
            text = re.sub(r"^import (\w+_pb2) as", r"from onnxcam.proto import \1 as", text, flags=re.MULTILINE)
        if self.own_pool and "_descriptor_pool.Default()" in text:
            text = text.replace("_descriptor_pool.Default()", "_inference_pool.POOL")
            text = text.replace("from google.protobuf import descriptor_pool as _descriptor_pool\n", POOL_IMPORT)
        return text


SETS = (
    ProtoSet(PROTO_ROOT, "onnxcam/v1", own_pool=False),
    ProtoSet(PROTO_ROOT / "inference", "", own_pool=True),
)


def build() -> dict[str, str]:
    """Run protoc (bundled with grpcio-tools) into a temporary folder; file name -> stub text."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    stubs = {}
    for proto_set in SETS:
        with tempfile.TemporaryDirectory() as tmp:
            args = ["protoc", f"-I{proto_set.include}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                    f"--grpc_python_out={tmp}"] + [str(p.relative_to(proto_set.include)) for p in proto_set.files()]
            if protoc.main(args) != 0:
                raise SystemExit("protoc failed")
            for path in sorted((Path(tmp) / proto_set.package).iterdir()):
                stubs[path.name] = proto_set.rewrite(path.read_text())
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
