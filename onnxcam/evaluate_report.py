"""``REPORT_DIR/index.html`` for ``onnxcam evaluate``: the summary table, each method's mean deletion
and insertion curves next to the two baselines', and each method's best and worst items with their
maps. Pictures are drawn with Pillow (no plotting library), next to the page in ``REPORT_DIR``.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from onnxcam import metrics
from onnxcam.evaluate import LOWER_IS_BETTER, SUMMARY_KEYS, Example, Outcome
from onnxcam.evaluate_maps import GAUSSIAN, RANDOM, to_2d
from server import heatmaps, imaging
from server.config import DEFAULT_MAX_IMAGE_PIXELS
from server.model_info import Preprocess

COLUMN_TITLES = {
    "average_drop": "Average Drop % ↓", "increase_in_confidence": "Increase in Confidence % ↑",
    "deletion_auc": "deletion AUC ↓", "insertion_auc": "insertion AUC ↑", "pointing_game": "pointing game % ↑",
    "energy_pointing_game": "energy pointing game % ↑", "localization_iou": "localisation IoU ↑",
    "localization_accuracy": "localisation accuracy % ↑"}
PERCENT_KEYS = ("average_drop", "increase_in_confidence", "pointing_game", "energy_pointing_game",
                "localization_accuracy")
METHOD_COLOR = (214, 39, 40)
BASELINE_STYLE = {RANDOM: ((110, 110, 110), True), GAUSSIAN: ((31, 119, 180), True)}
THUMBNAIL_SIDE = 224


def formatted(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if key in PERCENT_KEYS else f"{value:.3f}"


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def dashed_line(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], color: tuple[int, int, int],
            width: int, dash: float = 6.0) -> None:
    """A polyline drawn in dashes of ``dash`` px (Pillow has no dash style)."""
    on, left = True, dash
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        length = math.hypot(x1 - x0, y1 - y0)
        position = 0.0
        while position < length:
            part = min(left, length - position)
            if on:
                a, b = position / length, (position + part) / length
                draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                          fill=color, width=width)
            position += part
            left -= part
            if left <= 0:
                on, left = not on, dash


def curve_panel(title: str, series: list[tuple[str, np.ndarray, tuple[int, int, int], bool]], x_label: str,
                size: tuple[int, int] = (340, 300)) -> Image.Image:
    """One plot: probability (0-1) against the fraction of pixels changed (0-1), a legend below."""
    width, height = size
    legend_h = 16 * len(series) + 6
    image = Image.new("RGB", (width, height + legend_h), "white")
    draw = ImageDraw.Draw(image)
    small, label_font = font(11), font(13)
    left, right, top, bottom = 44, width - 12, 24, height - 36
    draw.text((left, 4), title, fill="black", font=label_font)
    for k in range(5):
        t = k / 4
        x = left + t * (right - left)
        y = bottom - t * (bottom - top)
        draw.line([(x, top), (x, bottom)], fill=(232, 232, 232))
        draw.line([(left, y), (right, y)], fill=(232, 232, 232))
        draw.text((x - 8, bottom + 4), f"{t:.2g}", fill=(80, 80, 80), font=small)
        draw.text((left - 30, y - 7), f"{t:.2f}", fill=(80, 80, 80), font=small)
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text(((left + right) / 2 - 60, bottom + 18), x_label, fill=(60, 60, 60), font=small)
    for n, (name, values, color, dashed) in enumerate(series):
        values = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
        xs = np.linspace(0.0, 1.0, values.size)
        points = [(left + x * (right - left), bottom - v * (bottom - top)) for x, v in zip(xs, values, strict=True)]
        if dashed:
            dashed_line(draw, points, color, 2)
        else:
            draw.line(points, fill=color, width=2)
        y = height + 4 + 16 * n
        draw.line([(left, y + 7), (left + 24, y + 7)], fill=color, width=2)
        draw.text((left + 30, y), f"{name}: AUC {metrics.auc(values):.3f}", fill="black", font=small)
    return image


def curves_picture(method: str, curves: dict[str, dict[str, np.ndarray]]) -> Image.Image:
    """Deletion and insertion side by side: the method against the random and Gaussian baselines."""
    panels = []
    for kind, x_label in (("deletion", "fraction of pixels deleted"), ("insertion", "fraction of pixels inserted")):
        series = [(method, curves[method][kind], METHOD_COLOR, False)]
        series += [(name, curves[name][kind], *BASELINE_STYLE[name]) for name in (RANDOM, GAUSSIAN) if name in curves]
        panels.append(curve_panel(f"{kind}: {method}", series, x_label))
    out = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width
    return out


def example_picture(example: Example, preprocess: Preprocess) -> Image.Image:
    """The item's photo with its map (jet, 50/50), its boxes (green) and the map's maximum (white)."""
    prepared = imaging.prepare_image(imaging.decode(example.path.read_bytes(), DEFAULT_MAX_IMAGE_PIXELS), preprocess)
    heat = heatmaps.upsample(heatmaps.normalize(to_2d(example.raw)), prepared.geometry)
    blended = 0.5 * heatmaps.jet(heat) + 0.5 * prepared.rgb.astype(np.float32) / 255.0
    image = Image.fromarray(heatmaps.to_uint8(blended))
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 200))
    for x1, y1, x2, y2 in example.boxes:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=(0, 255, 0), width=line)
    point = metrics.maximum_point(heat)
    if point is not None:
        r = 3 * line
        draw.ellipse([point[1] - r, point[0] - r, point[1] + r, point[0] + r], outline="white", width=line)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return image


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _table(data: dict[str, Any]) -> str:
    methods, baselines = data["methods"], data["baselines"]
    keys = [k for k in SUMMARY_KEYS if any(v.get(k) is not None for v in (*methods.values(), *baselines.values()))]
    best: dict[str, float] = {}
    for key in keys:
        values = [v[key] for v in methods.values() if v.get(key) is not None]
        if values:
            best[key] = min(values) if key in LOWER_IS_BETTER else max(values)
    head = "".join(f"<th>{html.escape(COLUMN_TITLES[k])}</th>" for k in keys)
    rows = []
    for kind, group in (("method", methods), ("baseline", baselines)):
        for name, values in group.items():
            cells = []
            for key in keys:
                text = formatted(key, values.get(key))
                bold = kind == "method" and values.get(key) is not None and values[key] == best.get(key)
                cells.append(f"<td>{'<b>' + text + '</b>' if bold else text}</td>")
            label = html.escape(name) + (" <small>(baseline)</small>" if kind == "baseline" else "")
            rows.append(f'<tr class="{kind}"><td>{label}</td><td>{values["items"]}</td>{"".join(cells)}</tr>')
    return f"<table><tr><th>map</th><th>items</th>{head}</tr>{''.join(rows)}</table>"


PAGE_STYLE = """body{font-family:sans-serif;margin:24px;max-width:1400px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.baseline{color:#666;font-style:italic}figure{display:inline-block;margin:4px;vertical-align:top}
figcaption{font-size:12px;max-width:224px}img{border:1px solid #ddd}.curves img{margin:6px}"""


def write(out_dir: Path, data: dict[str, Any], outcome: Outcome, preprocess: Preprocess) -> Path:
    """index.html and its pictures in ``out_dir`` (created); returns the page's path."""
    out_dir = Path(out_dir)
    pictures = out_dir / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    curves = {name: outcome.mean_curves(name) for name in outcome.curves}
    parts = [f"<h1>onnxcam evaluate: {html.escape(data['model'])}</h1>",
             f"<p>{data['images']} images, {data['items']} items (image × class), "
             f"{data['settings']['steps']} deletion/insertion steps, source {html.escape(data['settings']['source'])}, "
             f"{data['timing']['total_s']:.0f} s.</p>", _table(data),
             "<p>Average Drop: mean of max(0, Y − O)/Y × 100; Increase in Confidence: % of items with O &gt; Y (Y: the "
             "target's probability on the image, O: on the image × map). Deletion/insertion: area under the "
             "probability curve as the most salient pixels are removed (set to the normalisation's zero) or revealed "
             "on a blurred copy. Pointing game: the map's maximum within "
             f"{data['settings']['pointing_tolerance_px']:g} px of a box; energy: the map's mass inside the boxes; "
             "localisation: box around the largest component above 15% of the maximum, IoU with the best box, "
             "accuracy = % with IoU ≥ 0.5. Baselines: a random map at the target layer's resolution and a centred "
             "Gaussian.</p>"]
    skipped = data["skipped"]
    parts.append(f"<h2>Skipped</h2><p>{skipped['images']} images, {skipped['annotation_rows']} annotation rows, "
                 f"{skipped['boxes']} boxes, {skipped['maps']} maps.</p>")
    if skipped["problems"]:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in skipped["problems"])
        parts.append(f"<details><summary>{len(skipped['problems'])} problems</summary><ul>{items}</ul></details>")
    parts.append("<h2>Deletion and insertion curves (mean over items)</h2><div class='curves'>")
    for name in outcome.methods:
        if name in curves and curves[name]:
            file = f"curves_{_slug(name)}.png"
            curves_picture(name, curves).save(pictures / file)
            parts.append(f"<img src='pictures/{file}' alt='deletion and insertion curves of {html.escape(name)}'>")
    parts.append("</div><h2>Best and worst items per method (insertion − deletion AUC)</h2>")
    for name in outcome.methods:
        best, worst = outcome.extremes.ranked(name)
        if not best:
            continue
        parts.append(f"<h3>{html.escape(name)}</h3>")
        for title, examples in (("best", best), ("worst", worst)):
            parts.append(f"<div><b>{title}</b><br>")
            for n, example in enumerate(examples):
                file = f"{_slug(name)}_{title}_{n}.jpg"
                try:
                    example_picture(example, preprocess).save(pictures / file, quality=85)
                except (OSError, ValueError) as error:
                    parts.append(f"<p>cannot draw {html.escape(str(example.path))}: {html.escape(str(error))}</p>")
                    continue
                row = example.row
                parts.append(f"<figure><img src='pictures/{file}'><figcaption>{html.escape(row.image)}, class "
                             f"{row.label}: insertion {row.insertion_auc:.3f}, deletion {row.deletion_auc:.3f}, "
                             f"drop {row.drop:.1f}%</figcaption></figure>")
            parts.append("</div>")
    page = out_dir / "index.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>onnxcam evaluate</title>"
                    f"<style>{PAGE_STYLE}</style></head><body>{''.join(parts)}</body></html>", encoding="utf-8")
    return page
