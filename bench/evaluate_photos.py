"""The labelled photos that can be had offline, as an ``onnxcam evaluate`` folder with labels.csv.

    pip install --no-deps foolbox==3.3.4 imgaug==0.4.0     # only their data files are read
    python bench/evaluate_photos.py photos/
    onnxcam evaluate --images photos --annotations photos/labels.csv --methods all --out eval-report

- foolbox 3.3.4 (MIT): 20 ImageNet validation images, ``foolbox/data/imagenet_<i>_<label>.jpg``, the
  true class in the name; no boxes.
- imgaug 0.4.0 (MIT): ``quokka.jpg`` and its box (148, 50, 550, 642) from ``quokka_annotations.json``.
  ImageNet has no quokka; it is labelled 104, "wallaby, brush kangaroo", its closest class (both
  macropods). EfficientNet-Lite0 calls it a wombat (106) and gives wallaby 5%.
The packages are found by their installed files, never imported (importing them pulls more).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
from importlib.util import find_spec
from pathlib import Path

QUOKKA_LABEL = 104  # wallaby, brush kangaroo


def package_dir(name: str) -> Path:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install --no-deps foolbox==3.3.4 imgaug==0.4.0")
    return Path(next(iter(spec.submodule_search_locations)))


def write(folder: Path) -> Path:
    """Copy the photos into ``folder`` and write ``folder/labels.csv``; returns the CSV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in sorted((package_dir("foolbox") / "data").glob("imagenet_*.jpg")):
        label = int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", path.name).group(1))
        shutil.copyfile(path, folder / path.name)
        rows.append([path.name, label, "", "", "", ""])
    imgaug = package_dir("imgaug")
    shutil.copyfile(imgaug / "quokka.jpg", folder / "quokka.jpg")
    for box in json.loads((imgaug / "quokka_annotations.json").read_text())["bounding_boxes"]:
        rows.append(["quokka.jpg", QUOKKA_LABEL, *(box[k] for k in ("x1", "y1", "x2", "y2"))])
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "x1", "y1", "x2", "y2"])
        writer.writerows(rows)
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    labels = write(args.folder)
    print(f"wrote {labels} ({sum(1 for _ in labels.open()) - 1} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
