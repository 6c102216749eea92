"""How long the server takes to draw a map's heatmap and overlay PNGs, per megapixel, against the
renderer it replaced.

    python bench/render.py [--quick] [--repeats N]

Why: the server's PNGs can cost more than the explanation itself (a 6-megapixel photo's overlay,
or many maps of one photo). Goal (issue 14): at most 10 ms per megapixel per map, with every decoded
pixel the same as before. For each picture size (0.25, 1 and 6 megapixels, 4:3), background (a
photo, and the black picture the server's own cost probe uses) and kind (the grayscale heatmap, the
overlay, both), the old renderer (numpy over whole arrays, Pillow's PNG encoder) and the new one
(server.heatmaps: blocks of rows, server.png with zlib and, when installed, ISA-L) run interleaved
in one process; each case first checks that the decoded pixels are identical. The table gives ms per
megapixel per map: for "both" one map's two PNGs. The goal is judged on each call's CPU time: rendering
is single-threaded (numpy, zlib, ISA-L), so on an idle core its wall time is its CPU time, while on a
shared machine the wall time also counts the waits for a core (both are recorded). Stage timings (old
and new) say where the time goes; the encoder rows (the overlay's pixels through deflate alone, JPEG
and WebP) say what bounds a PNG overlay and what a lossy format would cost instead.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, median_ms, write_json  # noqa: E402

from server import heatmaps, png  # noqa: E402
from server.imaging import Geometry  # noqa: E402

PHOTO = ROOT / "onnxcam" / "demo_photos" / "chelsea.jpg"
GOAL_MS_PER_MPIXEL = 10.0
#: EfficientNet-Lite0's last block at 224 px: the default model's Grad-CAM map.
MAP_SHAPE = (7, 7)
KINDS = {"heatmap": (True, False), "overlay": (False, True), "both": (True, True)}


# ---- the renderer as it was (the baseline; its pixels are the reference) ------------------------------
def old_render(raw: np.ndarray, geometry: Geometry, rgb: np.ndarray, heatmap_png: bool,
               overlay_png: bool) -> tuple[bytes, bytes]:
    heat = heatmaps.upsample(heatmaps.normalize(raw), geometry)
    shown = _pillow_png(heatmaps.to_uint8(heat)) if heatmap_png else b""
    overlay = b""
    if overlay_png:
        blended = 0.5 * heatmaps.jet(heat) + 0.5 * (rgb.astype(np.float32) / 255.0)
        overlay = _pillow_png(heatmaps.to_uint8(blended))
    return shown, overlay


def _pillow_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def new_render(compressor: str):
    """server.heatmaps.render with one of server.png's compressors."""
    def render(raw: np.ndarray, geometry: Geometry, rgb: np.ndarray, heatmap_png: bool,
               overlay_png: bool) -> tuple[bytes, bytes]:
        gray, color = heatmaps.draw(raw, geometry, rgb, heatmap=heatmap_png, overlay=overlay_png)
        return (png.encode(gray, compressor) if gray is not None else b"",
                png.encode(color, compressor) if color is not None else b"")
    return render


# ---- inputs --------------------------------------------------------------------------------------------
def picture(mpixels: float, background: str) -> tuple[Geometry, np.ndarray]:
    """A 4:3 picture of about ``mpixels`` and the crop box the default preprocessing gives (the centre
    square, 224/256 of the shorter side)."""
    height = max(1, round((mpixels * 1e6 * 3 / 4) ** 0.5))
    width = max(1, round(height * 4 / 3))
    side = min(height, width) * 224 / 256
    geometry = Geometry(height, width, (height - side) / 2, (width - side) / 2, side, side)
    if background == "flat":
        return geometry, np.zeros((height, width, 3), np.uint8)
    photo = Image.open(PHOTO).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return geometry, np.asarray(photo)


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def check_same_pixels(renderers: dict, raw: np.ndarray, geometry: Geometry, rgb: np.ndarray) -> dict[str, int]:
    """Every renderer's PNGs decode to the old renderer's pixels; their sizes in bytes."""
    reference = [decoded(data) for data in renderers["old"](raw, geometry, rgb, True, True)]
    sizes = {}
    for name, render in renderers.items():
        pictures = render(raw, geometry, rgb, True, True)
        for expected, data in zip(reference, pictures, strict=True):
            if not np.array_equal(decoded(data), expected):
                raise SystemExit(f"{name}: the decoded pixels differ from the old renderer's")
        sizes[name] = sum(len(data) for data in pictures)
    return sizes


# ---- measurements --------------------------------------------------------------------------------------
def render_rows(renderers: dict, sizes: list[float], repeats: int) -> list[dict]:
    raw = np.random.default_rng(0).random(MAP_SHAPE, dtype=np.float32)
    rows = []
    for mpixels in sizes:
        for background in ("photo", "flat"):
            geometry, rgb = picture(mpixels, background)
            actual = geometry.height * geometry.width / 1e6
            png_bytes = check_same_pixels(renderers, raw, geometry, rgb)
            for kind, (heatmap_png, overlay_png) in KINDS.items():
                call = (raw, geometry, rgb, heatmap_png, overlay_png)
                times, cpu = timed({name: (lambda r=render, c=call: r(*c)) for name, render in renderers.items()},
                                   repeats)
                per = {name: median_ms(samples) / actual for name, samples in times.items()}
                cpu_per = {name: round(median_ms(samples) / actual, 2) for name, samples in cpu.items()}
                new = per[png.DEFAULT_COMPRESSOR]
                rows.append({"mpixels": round(actual, 3), "height": geometry.height, "width": geometry.width,
                             "background": background, "kind": kind,
                             "ms_per_mpixel": {name: round(value, 2) for name, value in per.items()},
                             "cpu_ms_per_mpixel": cpu_per,
                             "speedup": round(per["old"] / new, 2),
                             "goal_met": cpu_per[png.DEFAULT_COMPRESSOR] <= GOAL_MS_PER_MPIXEL,
                             "goal_met_wall": new <= GOAL_MS_PER_MPIXEL,
                             "png_bytes_both": png_bytes, "load_average": os.getloadavg()})
                print(f"{actual:5.2f} MP {background:5} {kind:7} "
                      + " ".join(f"{name} {value:7.1f}" for name, value in per.items())
                      + f"  ms/MP/map  {rows[-1]['speedup']:.1f}x  {'met' if rows[-1]['goal_met'] else 'missed'}"
                      + f"  (CPU ms/MP/map: old {cpu_per['old']:.1f}, new {cpu_per[png.DEFAULT_COMPRESSOR]:.1f})",
                      flush=True)
    return rows


def timed(functions: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """common.interleaved's wall times, and each call's CPU time (this process's: the machine is shared,
    and the CPU time is what other work on it does not inflate)."""
    cpu: dict[str, list[float]] = {name: [] for name in functions}

    def counted(name, function):
        def call():
            start = time.process_time()
            function()
            cpu[name].append(time.process_time() - start)
        return call

    wall = interleaved({name: counted(name, function) for name, function in functions.items()}, repeats, warmup=1)
    return wall, {name: samples[1:] for name, samples in cpu.items()}  # without the warm-up call


def probe_row(renderers: dict, repeats: int) -> dict:
    """The server's own cost probe (server.loaded_model): a 256 x 256 black picture, the box all of it,
    heatmap and overlay of one random map: the figure its budget uses, old and new."""
    side = 256
    raw = np.random.default_rng(1).random(MAP_SHAPE, dtype=np.float32)
    geometry, rgb = Geometry(side, side, 0.0, 0.0, float(side), float(side)), np.zeros((side, side, 3), np.uint8)
    check_same_pixels(renderers, raw, geometry, rgb)
    call = (raw, geometry, rgb, True, True)
    wall, cpu = timed({name: (lambda r=render: r(*call)) for name, render in renderers.items()}, repeats * 3)
    per = {name: round(median_ms(samples) / (side * side / 1e6), 2) for name, samples in wall.items()}
    cpu_per = {name: round(median_ms(samples) / (side * side / 1e6), 2) for name, samples in cpu.items()}
    print("cost probe (256 x 256, black, both): " + " ".join(f"{name} {value:.1f}" for name, value in per.items())
          + " ms/MP/map (CPU: " + " ".join(f"{name} {value:.1f}" for name, value in cpu_per.items()) + ")", flush=True)
    return {"ms_per_mpixel": per, "cpu_ms_per_mpixel": cpu_per,
            "goal_met": cpu_per[png.DEFAULT_COMPRESSOR] <= GOAL_MS_PER_MPIXEL, "load_average": os.getloadavg()}


def stage_rows(mpixels: float, repeats: int) -> dict[str, dict[str, float]]:
    """Where one map's time goes (photo background), old and new: wall and CPU ms per megapixel, interleaved."""
    raw = np.random.default_rng(0).random(MAP_SHAPE, dtype=np.float32)
    geometry, rgb = picture(mpixels, "photo")
    heat = heatmaps.upsample(heatmaps.normalize(raw), geometry)
    picture_jet = heatmaps.jet(heat)
    blended = 0.5 * picture_jet + 0.5 * (rgb.astype(np.float32) / 255.0)
    gray, color = heatmaps.to_uint8(heat), heatmaps.to_uint8(blended)
    lines = png.filtered_rows(color)
    stages = {
        "old: normalise + upsample": lambda: heatmaps.upsample(heatmaps.normalize(raw), geometry),
        "old: heatmap to uint8": lambda: heatmaps.to_uint8(heat),
        "old: heatmap PNG (Pillow)": lambda: _pillow_png(gray),
        "old: jet colormap": lambda: heatmaps.jet(heat),
        "old: blend with the photo": lambda: 0.5 * picture_jet + 0.5 * (rgb.astype(np.float32) / 255.0),
        "old: overlay to uint8": lambda: heatmaps.to_uint8(blended),
        "old: overlay PNG (Pillow)": lambda: _pillow_png(color),
        "new: heatmap pixels": lambda: heatmaps.draw(raw, geometry, rgb, heatmap=True, overlay=False),
        "new: overlay pixels": lambda: heatmaps.draw(raw, geometry, rgb, heatmap=False, overlay=True),
        "new: PNG filter (overlay)": lambda: png.filtered_rows(color),
        **{f"new: heatmap PNG ({name})": (lambda c=name: png.encode(gray, c)) for name in png.COMPRESSORS},
        **{f"new: overlay PNG ({name})": (lambda c=name: png.encode(color, c)) for name in png.COMPRESSORS},
        **{f"bound: overlay deflate alone ({name})": (lambda f=function: f(lines))
           for name, function in png.COMPRESSORS.items()},
        "instead: overlay JPEG quality 90 (Pillow)": lambda: _lossy(color, "JPEG", quality=90),
        "instead: overlay WebP quality 80, method 0 (Pillow)": lambda: _lossy(color, "WEBP", quality=80, method=0),
    }
    actual = geometry.height * geometry.width / 1e6
    wall, cpu = timed(stages, repeats)
    result = {name: {"wall": round(median_ms(wall[name]) / actual, 2), "cpu": round(median_ms(cpu[name]) / actual, 2)}
              for name in stages}
    for name, value in result.items():
        print(f"  {name:55} {value['wall']:7.2f} ms/MP (CPU {value['cpu']:7.2f})", flush=True)
    return result


def _lossy(array: np.ndarray, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind, **options)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small picture, 2 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [0.05] if args.quick else [0.25, 1.0, 6.0]
    repeats = 2 if args.quick else args.repeats
    renderers = {"old": lambda raw, geometry, rgb, h, o: old_render(raw, geometry, rgb, h, o),
                 **{name: new_render(name) for name in png.COMPRESSORS}}
    load_before = os.getloadavg()
    started = time.perf_counter()
    print(f"ms per megapixel per map (goal <= {GOAL_MS_PER_MPIXEL:g}); default compressor {png.DEFAULT_COMPRESSOR}; "
          f"load average {load_before[0]:.2f}", flush=True)
    probe = probe_row(renderers, repeats)
    rows = render_rows(renderers, sizes, repeats)
    print("stages at 1 MP, photo background:" if not args.quick else "stages (quick):", flush=True)
    stages = stage_rows(0.05 if args.quick else 1.0, repeats)
    path = write_json("render-quick" if args.quick else "render", {
        "goal_ms_per_mpixel": GOAL_MS_PER_MPIXEL, "map_shape": list(MAP_SHAPE), "repeats": repeats,
        "default_compressor": png.DEFAULT_COMPRESSOR, "compressors": list(png.COMPRESSORS),
        "probe": probe, "rows": rows,
        "stages_ms_per_mpixel": stages, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
