"""Export every promised architecture and print a markdown table of the export check.

    python bench/export_table.py [--size 224] [--arch resnet18 ...] [--json out.json] [--keep DIR]

Columns: target layer (default pick), worst relative error per output against PyTorch
autograd, export time and graph size. Random weights except EfficientNet-Lite (real).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from exporter import export
from exporter.sources import LITE_MEAN, LITE_STD, PRETRAINED, build_arch

ARCHS = ["resnet18", "resnet50", "vgg16", "densenet121", "mobilenet_v2", "mobilenet_v3_large",
         "efficientnet_b0", "convnext_tiny", "squeezenet1_1", "efficientnet_lite0", "vit_b_16", "swin_t"]
COLUMNS = ["logits", "activations", "gradients", "cam_gradcam", "cam_gradcampp", "cam_xgradcam",
           "cam_layercam", "cam_hirescam", "cam_cam", "head.logits", "forward.logits"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", nargs="*", default=ARCHS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="write the model folders under DIR instead of discarding them")
    args = parser.parse_args()
    rows = []
    print("| arch | layer | A | " + " | ".join(COLUMNS) + " | export s | explainer MiB |")
    print("|" + "---|" * (len(COLUMNS) + 5))
    for arch in args.arch:
        torch.manual_seed(0)
        lite = arch in PRETRAINED
        size = PRETRAINED[arch][1] if lite else args.size
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            report = export(build_arch(arch), None, (args.keep or Path(tmp)) / arch, input_size=(size, size),
                            **({"mean": LITE_MEAN, "std": LITE_STD} if lite else {}))
            seconds = time.perf_counter() - started
        errors = report.max_errors()
        row = {"arch": arch, "size": size, "layer": report.target_layer, "activation_shape": report.activation_shape,
               "errors": errors, "seconds": round(seconds, 1), "sizes_bytes": report.sizes_bytes}
        rows.append(row)
        cells = [f"{errors[c]:.1e}" if c in errors else "–" for c in COLUMNS]
        mib = report.sizes_bytes["explainer.onnx"] / 2**20
        print(f"| {arch} | {report.target_layer} | {'×'.join(map(str, report.activation_shape))} | "
              + " | ".join(cells) + f" | {seconds:.0f} | {mib:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
