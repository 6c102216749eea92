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
            overlays.append((method.title, heatmap.target_label, name))
        results.append({"photo": copy, "predictions": [(p.label, p.score) for p in response.predictions],
                        "timing": t, "overlays": overlays})
    return results


def write_contact_sheet(out: Path, results: list[dict], tile: int = 160) -> Path:
    """gallery.png: a row per photo, the photo then every method's picture, each titled: one image to
    look at or share without a browser."""
    from PIL import Image, ImageDraw

    caption = 14
    columns = 1 + max(len(r["overlays"]) for r in results)
    sheet = Image.new("RGB", (columns * tile, len(results) * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, result in enumerate(results):
        cells = [(result["photo"], result["photo"])] + [(method, file) for method, _, file in result["overlays"]]
        for column, (title, file) in enumerate(cells):
            with Image.open(out / file) as picture:
                picture = picture.convert("RGB")
                picture.thumbnail((tile, tile))
                x, y = column * tile, row * (tile + caption)
                sheet.paste(picture, (x + (tile - picture.width) // 2, y + caption + (tile - picture.height) // 2))
            draw.text((x + 3, y + 1), title[:24], fill="black")
    path = out / "gallery.png"
    sheet.save(path, optimize=True)
    return path


def write_index(out: Path, model: str, results: list[dict]) -> Path:
    """One self-contained page: each photo, its top-5 and its heatmaps side by side."""
    rows = []
    for result in results:
        predictions = "".join(f"<li>{html.escape(label)} <b>{score:.1%}</b></li>"
                              for label, score in result["predictions"])
        cells = "".join(
            f'<figure><img src="{html.escape(file)}"><figcaption>{html.escape(method)}<br>'
            f"<small>{html.escape(label)}</small></figcaption></figure>" for method, label, file in result["overlays"])
        t = result["timing"]
        rows.append(
            f'<section><figure><img src="{html.escape(result["photo"])}"><figcaption>{html.escape(result["photo"])}'
            f"</figcaption></figure><div class=preds><ol>{predictions}</ol><small>server total {t.total_ms:.0f} ms "
            f"(inference {t.inference_ms:.0f} ms)</small></div>{cells}</section>")
    page = f"""<!doctype html>
<meta charset="utf-8"><title>onnxcam demo: {html.escape(model)}</title>
<style>body{{font-family:sans-serif;margin:2em}} section{{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start;
border-bottom:1px solid #ddd;padding:1em 0}} figure{{margin:0;text-align:center}} img{{height:180px}}
.preds{{width:16em}} ol{{padding-left:1.2em;margin:0}}</style>
<h1>onnxcam demo</h1><p>Model <b>{html.escape(model)}</b>; heatmaps explain the top-1 class, computed by one
ONNX Runtime call (the backward pass is inside the graph).</p>
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
                results = explain_photos(client, args.model, photos, args.methods, out)
            except grpc.RpcError as error:
                raise rpc_failure(error, f"127.0.0.1:{port}") from None
    finally:
        stop_server(server)
    index = write_index(out, args.model, results)
    sheet = write_contact_sheet(out, results)
    say(f"wrote {index} ({len(results)} photos); open it in a browser: file://{os.path.abspath(index)}")
    say(f"wrote {sheet}: every method on every photo in one picture")
    return 0
