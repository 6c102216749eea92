"""What the commands accept on the command line: photos and folders of photos, and method lists.

Methods are one comma-separated value (``--methods gradcam,layercam``), never a greedy list, so a
folder after ``--methods gradcam`` stays a folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from onnxcam.cli_errors import CliError

#: What a folder contributes: the images directly inside it (not its sub-folders), sorted by name.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders as the images directly inside them; fails on a path that is neither."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise CliError(f"{path} holds no image ({', '.join(IMAGE_SUFFIXES)})", code=2)
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CliError(f"{path}: no such file or folder", code=2)
    return files


def method_list(text: str) -> list[str]:
    """argparse type: ``gradcam,layercam`` -> ["gradcam", "layercam"], every name checked now, not after
    the server was reached."""
    from onnxcam.client import method_value

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no method given")
    for name in names:
        try:
            method_value(name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return names


def output_stems(files: Sequence[Path]) -> list[str]:
    """One output name per image: its stem, with -2, -3... when two images share one (a/cat.jpg, b/cat.png)."""
    taken: set[str] = set()
    stems = []
    for file in files:
        stem, count = file.stem, 1
        while stem in taken:
            count += 1
            stem = f"{file.stem}-{count}"
        taken.add(stem)
        stems.append(stem)
    return stems
