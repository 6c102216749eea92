"""Labels and boxes for ``onnxcam evaluate``: a CSV, a folder of Pascal VOC XML files, or COCO JSON.

Whatever the format, the result is a list of items, one per (image, class): the class to explain
and the boxes of that class in original-image pixels, as (x1, y1, x2, y2) edge coordinates
(onnxcam.metrics). Pascal VOC's 1-based inclusive pixel indices become (xmin - 1, ymin - 1, xmax,
ymax); COCO's [x, y, width, height] becomes (x, y, x + width, y + height); a CSV's x1, y1, x2, y2 are
taken as edge coordinates, as COCO's.

A bad entry never stops the run: it is recorded as a ``Problem`` naming the file and line (the
entry's index in a JSON list) and left out, and the report counts what was left out.
Class names are resolved through a class map (``--classes``: JSON {"name": index} or one name per
line) or else the model's own labels (the whole label or one of its comma-separated synonyms, any
case); an integer is taken as the class index.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from onnxcam.metrics import Box

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CSV_BOX_COLUMNS = ("x1", "y1", "x2", "y2")
#: A box may overshoot the image by this much (annotation tools round outwards); it is clipped.
BOX_SLACK_PX = 1.0


@dataclass(frozen=True)
class LabelledBox:
    box: Box
    #: "file:line" of the box's row.
    where: str


@dataclass
class Item:
    """One thing to explain: an image and a class (None: the image's top-1 prediction)."""

    image: str
    label: int | None
    boxes: list[LabelledBox] = field(default_factory=list)
    where: str = ""


@dataclass(frozen=True)
class Problem:
    where: str
    message: str
    #: What was left out: "row" (a label or an annotation entry), "box" or "image".
    skipped: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Annotations:
    items: list[Item]
    problems: list[Problem] = field(default_factory=list)
    #: Whether the source can carry boxes at all (a CSV with x1..y2 columns, VOC, COCO).
    has_boxes: bool = False


class AnnotationError(ValueError):
    """The annotation source cannot be read at all (missing, wrong format, no header)."""


class Classes:
    """Class names and indices -> the model's class index."""

    def __init__(self, labels: Sequence[str], class_map: dict[str, int] | None = None) -> None:
        self.num_classes = len(labels)
        self.class_map = {k.strip().lower(): int(v) for k, v in (class_map or {}).items()}
        self.by_name: dict[str, list[int]] = {}
        for index, label in enumerate(labels):
            names = {label.strip().lower(), *(part.strip().lower() for part in label.split(","))}
            for name in names - {""}:
                self.by_name.setdefault(name, []).append(index)

    def resolve(self, value: str) -> int:
        """The class index of ``value`` (an index or a name); ValueError says why not."""
        text = value.strip()
        if not text:
            raise ValueError("the label is empty")
        try:
            index = int(text)
        except ValueError:
            index = self._by_name(text)
        if not 0 <= index < self.num_classes:
            raise ValueError(f"label {index} is out of range: the model has {self.num_classes} classes")
        return index

    def _by_name(self, name: str) -> int:
        key = name.lower()
        if self.class_map:
            if key not in self.class_map:
                raise ValueError(f"unknown label {name!r}: not in the class map")
            return self.class_map[key]
        found = self.by_name.get(key, [])
        if not found:
            raise ValueError(f"unknown label {name!r}: no model label or synonym is called that "
                             "(give the class index or a --classes map)")
        if len(found) > 1:
            raise ValueError(f"label {name!r} is ambiguous: classes {', '.join(map(str, found))} are called that "
                             "(give the class index)")
        return found[0]


def read_class_map(path: Path) -> dict[str, int]:
    """JSON {"name": index}, or a text file with one name per line (the line's position is the index)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise AnnotationError(f"cannot read the class map {path}: {error.strerror or error}") from error
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise AnnotationError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise AnnotationError(f"{path}: a JSON class map must be an object of name -> class index")
        return dict(data)
    return {line.strip(): index for index, line in enumerate(text.splitlines()) if line.strip()}


def load(path: Path, classes: Classes) -> Annotations:
    """Items from ``path``: a folder of VOC XML files, a COCO .json, or a CSV."""
    path = Path(path)
    if path.is_dir():
        return load_voc(path, classes)
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist")
    if path.suffix.lower() == ".json":
        return load_coco(path, classes)
    return load_csv(path, classes)


def _merge(items: dict[tuple[str, int | None], Item], image: str, label: int | None, where: str) -> Item:
    key = (image, label)
    if key not in items:
        items[key] = Item(image, label, [], where)
    return items[key]


def _box(values: Sequence[float]) -> Box:
    """A well-formed box from four numbers, or ValueError."""
    x1, y1, x2, y2 = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError("box coordinates must be finite numbers")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is empty: x2 must exceed x1 and y2 exceed y1")
    return x1, y1, x2, y2


# ----------------------------------------------------------------------------------------------
# CSV


def load_csv(path: Path, classes: Classes) -> Annotations:
    """Header ``image,label`` and optionally ``x1,y1,x2,y2``; one row per box, rows without box
    values give a label only."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise AnnotationError(f"cannot read {path}: {error.strerror or error}") from error
    with handle:
        try:
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in reader.fieldnames or []]
        except (csv.Error, UnicodeDecodeError) as error:
            raise AnnotationError(f"{path}:1: not a readable CSV ({error})") from error
        missing = [name for name in ("image", "label") if name not in header]
        if missing:
            raise AnnotationError(f"{path}:1: the header must name image and label (and optionally "
                                  f"{', '.join(CSV_BOX_COLUMNS)}); it lacks {', '.join(missing)}")
        has_boxes = all(name in header for name in CSV_BOX_COLUMNS)
        reader.fieldnames = header
        items: dict[tuple[str, int | None], Item] = {}
        problems: list[Problem] = []
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                _csv_row(row, where, classes, has_boxes, items, problems)
        except (csv.Error, UnicodeDecodeError) as error:
            problems.append(Problem(f"{path}:{reader.line_num}", f"unreadable CSV, the rest of the file is "
                                    f"skipped ({error})", "row"))
    return Annotations(list(items.values()), problems, has_boxes)


def _csv_row(row: dict[str, str | None], where: str, classes: Classes, has_boxes: bool,
             items: dict[tuple[str, int | None], Item], problems: list[Problem]) -> None:
    image = (row.get("image") or "").strip()
    if not image:
        problems.append(Problem(where, "the image column is empty", "row"))
        return
    try:
        label = classes.resolve(row.get("label") or "")
    except ValueError as error:
        problems.append(Problem(where, f"{image}: {error}", "row"))
        return
    item = _merge(items, image, label, where)
    values = [(row.get(name) or "").strip() for name in CSV_BOX_COLUMNS] if has_boxes else []
    if not any(values):
        return
    try:
        if not all(values):
            raise ValueError("give all four of x1, y1, x2, y2 or none")
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise ValueError(f"box values {', '.join(values)} are not all numbers") from None
        item.boxes.append(LabelledBox(_box(numbers), where))
    except ValueError as error:
        problems.append(Problem(where, f"{image}: {error}; the box is skipped", "box"))


# ----------------------------------------------------------------------------------------------
# Pascal VOC


@dataclass
class _Node:
    tag: str
    line: int
    children: list[_Node] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> _Node | None:
        return next((child for child in self.children if child.tag == tag), None)

    def value(self, tag: str) -> str:
        node = self.find(tag)
        return node.text.strip() if node is not None else ""


def _parse_xml(path: Path) -> _Node:
    """A small element tree that keeps each element's line number (ElementTree does not)."""
    parser = expat.ParserCreate()
    root = _Node("", 0)
    stack = [root]

    def start(tag: str, _attributes: dict) -> None:
        node = _Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        stack[-1].text += data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    parser.ParseFile(path.open("rb"))
    if not root.children:
        raise ValueError("no XML element")
    return root.children[0]


def load_voc(folder: Path, classes: Classes) -> Annotations:
    """Every ``*.xml`` under ``folder``: ``<filename>`` and its ``<object>``s (``<name>``, ``<bndbox>``)."""
    files = sorted(folder.rglob("*.xml"))
    if not files:
        raise AnnotationError(f"{folder} holds no Pascal VOC .xml files")
    items: dict[tuple[str, int | None], Item] = {}
    problems: list[Problem] = []
    for path in files:
        try:
            root = _parse_xml(path)
        except (OSError, ValueError, expat.ExpatError) as error:
            line = getattr(error, "lineno", 1)
            problems.append(Problem(f"{path}:{line}", f"unreadable XML, the file is skipped ({error})", "row"))
            continue
        image = root.value("filename")
        if not image:
            problems.append(Problem(f"{path}:{root.line}", "no <filename>: the file is skipped", "row"))
            continue
        for obj in (child for child in root.children if child.tag == "object"):
            where = f"{path}:{obj.line}"
            try:
                label = classes.resolve(obj.value("name"))
            except ValueError as error:
                problems.append(Problem(where, f"{image}: {error}", "row"))
                continue
            item = _merge(items, image, label, where)
            box = obj.find("bndbox")
            try:
                if box is None:
                    raise ValueError("the object has no <bndbox>")
                xmin, ymin, xmax, ymax = (float(box.value(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
                item.boxes.append(LabelledBox(_box((xmin - 1, ymin - 1, xmax, ymax)), where))
            except ValueError as error:
                problems.append(Problem(where, f"{image}: {error}; the box is skipped", "box"))
    return Annotations(list(items.values()), problems, True)


# ----------------------------------------------------------------------------------------------
# COCO


def load_coco(path: Path, classes: Classes) -> Annotations:
    """COCO detection JSON: ``images`` (id, file_name), ``categories`` (id, name), ``annotations``
    (image_id, category_id, bbox [x, y, width, height]). Category names go through ``classes``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise AnnotationError(f"cannot read {path}: {error.strerror or error}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        line = getattr(error, "lineno", 1)
        raise AnnotationError(f"{path}:{line}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                       "categories")):
        raise AnnotationError(f"{path}: COCO JSON needs lists 'images', 'annotations' and 'categories'")
    problems: list[Problem] = []
    images: dict[object, str] = {}
    for n, entry in enumerate(data["images"]):
        if isinstance(entry, dict) and entry.get("file_name") and "id" in entry:
            images[entry["id"]] = str(entry["file_name"])
        else:
            problems.append(Problem(f"{path}: images[{n}]", "needs an id and a file_name", "row"))
    categories: dict[object, int] = {}
    unknown: dict[object, str] = {}
    for n, entry in enumerate(data["categories"]):
        if not isinstance(entry, dict) or "id" not in entry:
            problems.append(Problem(f"{path}: categories[{n}]", "needs an id and a name", "row"))
            continue
        try:
            categories[entry["id"]] = classes.resolve(str(entry.get("name", "")))
        except ValueError as error:
            unknown[entry["id"]] = f"category {entry['id']}: {error}"
            problems.append(Problem(f"{path}: categories[{n}]", unknown[entry["id"]], "row"))
    items: dict[tuple[str, int | None], Item] = {}
    for n, entry in enumerate(data["annotations"]):
        where = f"{path}: annotations[{n}]"
        if not isinstance(entry, dict):
            problems.append(Problem(where, "not an object", "row"))
            continue
        image, category = images.get(entry.get("image_id")), entry.get("category_id")
        if image is None:
            problems.append(Problem(where, f"image_id {entry.get('image_id')!r} is not in 'images'", "row"))
            continue
        if category not in categories:
            why = unknown.get(category, f"category_id {category!r} is not in 'categories'")
            problems.append(Problem(where, f"{image}: {why}", "row"))
            continue
        item = _merge(items, image, categories[category], where)
        try:
            bbox = entry.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError("bbox must be [x, y, width, height]")
            x, y, width, height = (float(v) for v in bbox)
            item.boxes.append(LabelledBox(_box((x, y, x + width, y + height)), where))
        except (TypeError, ValueError) as error:
            problems.append(Problem(where, f"{image}: {error}; the box is skipped", "box"))
    return Annotations(list(items.values()), problems, True)


# ----------------------------------------------------------------------------------------------
# images


def image_folder_items(folder: Path) -> list[Item]:
    """Without annotations: every image file in ``folder`` (sorted), its top-1 class explained."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotationError(f"image folder {folder} does not exist")
    return [Item(str(p.relative_to(folder)), None, [], str(p)) for p in sorted(folder.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def checked_boxes(item: Item, width: int, height: int) -> tuple[list[Box], list[Problem]]:
    """The item's boxes that lie in a ``width`` x ``height`` image (clipped by up to BOX_SLACK_PX),
    and a problem for each one that does not."""
    kept: list[Box] = []
    problems: list[Problem] = []
    for labelled in item.boxes:
        x1, y1, x2, y2 = labelled.box
        if x1 < -BOX_SLACK_PX or y1 < -BOX_SLACK_PX or x2 > width + BOX_SLACK_PX or y2 > height + BOX_SLACK_PX:
            problems.append(Problem(labelled.where, f"{item.image}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside "
                                    f"the {width}x{height} image; the box is skipped", "box"))
            continue
        kept.append((max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))))
    return kept, problems
