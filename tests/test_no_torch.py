"""The serving side runs where torch does not exist: a subprocess whose import system refuses torch
(and tritonclient, a test-only client the server never needs) imports every server module, builds the
``onnxcam`` parser, serves an exported model over gRPC and answers an Explain through the client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import importlib, importlib.abc, io, json, pkgutil, sys
from pathlib import Path

BLOCKED = ("torch", "torchvision", "torchaudio", "functorch", "tritonclient")


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by the test)", name=fullname)
        return None


sys.meta_path.insert(0, NoTorch())
try:
    import torch  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the torch blocker did not work")

import server
modules = sorted(m.name for m in pkgutil.walk_packages(server.__path__, "server."))
for name in modules:
    importlib.import_module(name)

import argparse
from server.cli import register  # the serve subcommand's own parser
parser = argparse.ArgumentParser()
register(parser.add_subparsers())
assert parser.parse_args(["serve", "--models", sys.argv[1]]).handler

import numpy as np
from PIL import Image
from onnxcam.client import ExplainerClient
from server.app import ExplainerServer
from server.config import ServerConfig
from server.repository import load_repository

config = ServerConfig(port=0, intra_op_threads=1, inter_op_threads=1)
running = ExplainerServer(load_repository(Path(sys.argv[1]), config), config).start()
image = io.BytesIO()
Image.fromarray((np.indices((40, 50)).sum(0) % 255).astype(np.uint8)).convert("RGB").save(image, "PNG")
with ExplainerClient(running.address, timeout=60) as client:
    response = client.explain(image.getvalue(), "tiny", methods=["gradcam", "scorecam"], overlay_png=True)
running.stop(0)
print(json.dumps({
    "modules": modules,
    "torch_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
    "predictions": len(response.predictions),
    "heatmaps": [h.method for h in response.heatmaps],
    "overlay_bytes": len(response.heatmaps[0].overlay_png),
    "skipped": [s.detail for s in response.skipped],
}))
'''


def test_server_serves_without_torch(tiny_model_dir):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch_loaded"] == []
    assert {"server.app", "server.pipeline", "server.cli", "server.open_inference"} <= set(report["modules"])
    assert report["predictions"] == 5 and report["overlay_bytes"] > 0
    assert report["heatmaps"][0] == 3  # GRADCAM; SCORECAM too unless server.gradient_free is absent
    assert len(report["heatmaps"]) + len(report["skipped"]) == 2


def test_onnxcam_serve_command_parses_without_torch(tmp_path):
    script = SCRIPT.split("import server\n")[0] + (
        "from onnxcam.cli import build_parser\n"
        f"build_parser().parse_args(['serve', '--models', {str(tmp_path)!r}])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
