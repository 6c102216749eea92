"""``onnxcam demo``: build the default model, serve it, explain real photos over gRPC, write a page.

Everything a newcomer needs to see the product work, printed as it happens.
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from onnxcam import contract
from onnxcam import methods as registry
from onnxcam.cli_errors import EXPORT_EXTRA_HINT, CliError, check_writable_dir, rpc_failure
from onnxcam.cli_inputs import image_files, method_list, output_stems
from onnxcam.preprocess import Spec, crop_box, spec_from_message

DEFAULT_MODEL = "efficientnet_lite0"
#: The gallery shows every method that takes milliseconds, not seconds, per photo on a CPU.
DEFAULT_METHODS = [m.name for m in registry.METHODS if not m.slow]
#: The sampled methods with fewer rows than the server's defaults (25 samples, 50 steps, 169 patch
#: positions): a few seconds per photo instead of ten on two cores, and the same kind of picture.
DEMO_SAMPLING = {"samples": 10, "steps": 16, "patch": 56, "stride": 28}
STARTUP_TIMEOUT_S = 300.0


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="explain real photos with the default model and write a web page",
        description="Build the default model (from its recipe, when missing), serve it, explain photos over gRPC "
                    "and write a web page and a gallery image, printing each step as it happens.")
    parser.add_argument("--models", default="models", help="model repository (default: models)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model to explain with (default {DEFAULT_MODEL})")
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--methods", type=method_list, default=DEFAULT_METHODS, metavar="METHOD[,METHOD...]",
                        help="methods to show, comma-separated (default: every method but the slow ones, "
                             f"{', '.join(m.name for m in registry.METHODS if m.slow)}; a method the model "
                             "cannot compute is listed as skipped)")
    parser.add_argument("photos", nargs="*", type=Path, metavar="PHOTO",
                        help="your own photos or folders of them (default: the bundled ones)")
    parser.set_defaults(handler=run)


def bundled_photos() -> list[Path]:
    folder = resources.files("onnxcam") / "demo_photos"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".jpg"))


def ensure_model(models: Path, name: str) -> None:
    """Export the model from its recipe when it is missing or stale (needs the export extra); a folder
    exported by hand (model.json, no recipe) is used as it is."""
    folder = models / name
    if not (folder / contract.RECIPE_FILE).is_file():
        if (folder / contract.MODEL_JSON).is_file():
            return
        raise CliError(f"model {name} is neither built nor a recipe in {models} ({folder} has no "
                       f"{contract.MODEL_JSON} or {contract.RECIPE_FILE})", code=2)
    try:
        from exporter.recipes import build_all
    except ImportError:
        if (folder / contract.MODEL_JSON).exists():
            return
        raise CliError(f"model {name} is not built in {models} and building it needs torch: {EXPORT_EXTRA_HINT}",
                       code=2) from None
    say(f"checking model {name} (exports from models/{name}/recipe.json when missing or stale; ~1-2 min)")
    for line in build_all(models, only=[name]):
        say(line)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(models: Path, port: int) -> subprocess.Popen:
    say(f"starting the server on 127.0.0.1:{port}")
    command = [sys.executable, "-m", "onnxcam.cli", "serve", "--models", str(models), "--host", "127.0.0.1",
               "--port", str(port)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until_serving(client, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            lines = [line for line in server.stderr.read().splitlines() if line.strip()]
            raise CliError(f"the server exited with code {server.returncode}: {lines[-1] if lines else 'no output'}")
        try:
            if client.health(timeout=1.0) == "SERVING":
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    raise CliError(f"the server did not become ready in {STARTUP_TIMEOUT_S:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    say("stopping the server (SIGTERM: in-flight requests finish first)")
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    say(f"server stopped (exit code {server.returncode})")


def explain_photos(client, model: str, photos: list[Path], methods: list[str], out: Path) -> list[dict]:
    from onnxcam.client import format_skipped, format_timing, method_name

    results = []
    for photo, stem in zip(photos, output_stems(photos), strict=True):  # photos from two folders may share a name
        response = client.explain(photo, model=model, methods=methods, top_k=5, overlay_png=True, heatmap_png=True,
                                  sampling=DEMO_SAMPLING, timeout=600)
        say(f"{photo.name}:")
        for p in response.predictions:
            say(f"    {p.score:6.1%}  {p.label}  (class {p.index})")
        t = response.timing
        say(f"    {format_timing(t)}")
        for skipped in response.skipped:
            say(f"    {format_skipped(skipped)}")
        copy = f"{stem}{photo.suffix}"
        shutil.copyfile(photo, out / copy)
        overlays = []
        for heatmap in response.heatmaps:
            method = registry.get(method_name(heatmap.method))
            name = f"{stem}_{method.name}.png"
            # Gradient images (guided backpropagation...) are shown as the papers show them, not over the photo.
            (out / name).write_bytes(heatmap.heatmap_png if method.channels > 1 else heatmap.overlay_png)
            overlays.append((method.title, heatmap.target_label, name, method.name))
        results.append({"photo": copy, "predictions": [(p.label, p.score) for p in response.predictions],
                        "timing": t, "overlays": overlays, "size": (response.image_height, response.image_width)})
    return results


def shown_methods(results: list[dict]) -> list[str]:
    """The methods that came back for some photo, in the order asked: one column each."""
    names: list[str] = []
    for result in results:
        names += [name for *_, name in result["overlays"] if name not in names]
    return [m.name for m in registry.METHODS if m.name in names]


def jet_stops(count: int = 9) -> list[tuple[int, int, int]]:
    """The overlay's colour ramp (the server's own), from 0 (cold) to 1 (hot)."""
    import numpy as np

    from server.heatmaps import jet, to_uint8

    return [tuple(int(v) for v in c) for c in to_uint8(jet(np.linspace(0.0, 1.0, count, dtype=np.float32)))]


def write_contact_sheet(out: Path, results: list[dict], tile: int = 160) -> Path:
    """gallery.png: a row per photo, the photo then one column per method (empty where it was
    skipped, so columns line up), each titled, and a colour bar: one image to look at or share
    without a browser."""
    from PIL import Image, ImageDraw

    caption, legend = 14, 34
    methods = shown_methods(results)
    columns = 1 + max(len(methods), 1)
    sheet = Image.new("RGB", (columns * tile, len(results) * (tile + caption) + legend), "white")
    draw = ImageDraw.Draw(sheet)
    for row, result in enumerate(results):
        by_method = {name: (registry.get(name).title, file) for _, _, file, name in result["overlays"]}
        cells = [(0, result["photo"], result["photo"])] + [(1 + methods.index(name), title, file)
                                                            for name, (title, file) in by_method.items()]
        for column, title, file in cells:
            with Image.open(out / file) as picture:
                picture = picture.convert("RGB")
                picture.thumbnail((tile, tile))
                x, y = column * tile, row * (tile + caption)
                sheet.paste(picture, (x + (tile - picture.width) // 2, y + caption + (tile - picture.height) // 2))
            draw.text((x + 3, y + 1), title[:24], fill="black")
    top, stops = len(results) * (tile + caption) + 4, jet_stops(256)
    for i, colour in enumerate(stops):
        draw.line([(8 + i, top), (8 + i, top + 12)], fill=colour)
    draw.text((8, top + 15), "0 cold", fill="black")
    draw.text((8 + len(stops) - 30, top + 15), "1 hot", fill="black")
    draw.text((8 + len(stops) + 12, top), "maps cover only the centre crop the model sees; outside it they are 0",
              fill="black")
    path = out / "gallery.png"
    sheet.save(path, optimize=True)
    return path


def method_notes(methods: list[str]) -> str:
    """One line per method shown: what its picture shows and what it costs in graph calls."""
    items = "".join(f"<li><b>{html.escape(registry.get(n).title)}</b>: {html.escape(registry.get(n).shows)} "
                    f"<small>({html.escape(registry.get(n).calls)})</small></li>" for n in methods)
    return f"<ul class=notes>{items}</ul>"


def colour_bar() -> str:
    """The overlay's colour ramp as a CSS gradient, labelled."""
    stops = ", ".join(f"rgb{colour}" for colour in jet_stops())
    return (f'<div class=legend><span>0 (cold)</span><div class=bar style="background:linear-gradient(to right, '
            f'{stops})"></div><span>1 (hot)</span> <small>each map is scaled to its own maximum: colours compare '
            "areas within one map, not across maps</small></div>")


def crop_outline(size: tuple[int, int], spec: Spec | None) -> str:
    """A dashed box over the photo where the model looked (the centre crop), in percent of the photo."""
    if spec is None or not all(size):
        return ""
    top, left, height, width = crop_box(size[0], size[1], spec)
    h, w = size
    return (f'<div class=crop style="top:{100 * top / h:.2f}%;left:{100 * left / w:.2f}%;'
            f'height:{100 * height / h:.2f}%;width:{100 * width / w:.2f}%"></div>')


def write_index(out: Path, model: str, results: list[dict], num_classes: int = 0, spec: Spec | None = None) -> Path:
    """One self-contained page: what each method shows, a colour legend, then each photo (the crop the
    model sees outlined), its top-5 and one cell per method, so rows line up."""
    methods = shown_methods(results)
    rows = []
    for result in results:
        predictions = "".join(f"<li>{html.escape(label)} <b>{score:.1%}</b></li>"
                              for label, score in result["predictions"])
        by_method = {name: (title, label, file) for title, label, file, name in result["overlays"]}
        cells = "".join(
            f'<figure><img src="{html.escape(by_method[n][2])}"><figcaption>{html.escape(by_method[n][0])}<br>'
            f"<small>{html.escape(by_method[n][1])}</small></figcaption></figure>" if n in by_method else
            f"<figure class=skipped><div>skipped</div><figcaption>{html.escape(registry.get(n).title)}"
            "</figcaption></figure>" for n in methods)
        t = result["timing"]
        rows.append(
            f'<section><figure><div class=photo><img src="{html.escape(result["photo"])}">'
            f'{crop_outline(result.get("size", (0, 0)), spec)}</div><figcaption>{html.escape(result["photo"])}'
            f"</figcaption></figure><div class=preds><ol>{predictions}</ol><small>server total {t.total_ms:.0f} ms "
            f"(inference {t.inference_ms:.0f} ms)</small></div>{cells}</section>")
    classes = (f"The model knows ImageNet's {num_classes} classes only: a photo of anything else gets the nearest of "
               "them, and a low top-1 score says so." if num_classes == 1000 else
               f"The model knows {num_classes} classes only: a photo of anything else gets the nearest of them."
               if num_classes else "")
    crop = ("Every map covers only the centre crop the model sees (the dashed box on each photo: the shorter side "
            f"resized to {spec.resize_shorter_side} px, then the centre {spec.crop[1]}x{spec.crop[0]}); outside it "
            "the maps are 0." if spec else "Every map covers only the centre crop the model sees.")
    page = f"""<!doctype html>
<meta charset="utf-8"><title>onnxcam demo: {html.escape(model)}</title>
<style>body{{font-family:sans-serif;margin:2em}}
section{{display:grid;grid-template-columns:repeat(auto-fill,200px);gap:1em;align-items:start;
border-bottom:1px solid #ddd;padding:1em 0}} figure{{margin:0;text-align:center;width:200px}}
img{{max-width:200px;max-height:180px;display:block;margin:auto}} .photo{{position:relative;display:inline-block}}
.crop{{position:absolute;border:2px dashed #fff;outline:1px dashed #000;box-sizing:border-box}}
.skipped div{{height:180px;display:flex;align-items:center;justify-content:center;background:#f4f4f4;color:#888}}
.preds{{width:200px}} ol{{padding-left:1.2em;margin:0}} .notes li{{margin:.2em 0}}
.legend{{display:flex;align-items:center;gap:.5em;margin:1em 0}} .bar{{width:240px;height:14px}}</style>
<h1>onnxcam demo</h1><p>Model <b>{html.escape(model)}</b>; heatmaps explain the top-1 class. {html.escape(classes)}
{html.escape(crop)}</p>
{method_notes(methods)}
{colour_bar()}
{"".join(rows)}
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def run(args: argparse.Namespace) -> int:
    import grpc

    from onnxcam.client import ExplainerClient

    models, out = Path(args.models), Path(args.out)
    if not models.is_dir():
        raise CliError(f"--models {models} is not a folder (the model repository, e.g. models)", code=2)
    check_writable_dir(out, "--out")
    photos = image_files(args.photos) if args.photos else bundled_photos()
    ensure_model(models, args.model)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(models, port)
    try:
        with ExplainerClient(f"127.0.0.1:{port}") as client:
            wait_until_serving(client, server)
            say(f"server ready; explaining {len(photos)} photos with {', '.join(args.methods)}")
            try:
                meta = client.metadata(args.model)
                results = explain_photos(client, args.model, photos, args.methods, out)
            except grpc.RpcError as error:
                raise rpc_failure(error, f"127.0.0.1:{port}") from None
    finally:
        stop_server(server)
    spec = spec_from_message(meta.preprocess)
    index = write_index(out, args.model, results, meta.num_classes, spec)
    sheet = write_contact_sheet(out, results)
    say(f"wrote {index} ({len(results)} photos); open it in a browser: file://{os.path.abspath(index)}")
    say(f"wrote {sheet}: every method on every photo in one picture")
    return 0
