"""Server pieces on their own: budget choice, map geometry, batcher bookkeeping, method parsing, and
the server's behaviour when server.gradient_free cannot be imported."""

from __future__ import annotations

import gc
import importlib.abc
import io
import sys
import time
import weakref

import numpy as np
import pytest
from PIL import Image
from test_server_helpers import config, encode, rgb_image

from onnxcam.proto import explainer_pb2 as pb
from server import budget, heatmaps, imaging, methods
from server.batcher import Batcher
from server.errors import RequestError
from server.model_info import Preprocess

COSTS = budget.Costs(predict_ms=1.0, explainer_ms=3.0, extra_ms={"scorecam": 50.0, "ablationcam": 10.0})


@pytest.mark.parametrize("available, chosen", [
    (1000.0, ["scorecam", "gradcam", "ablationcam", "layercam"]),  # everything fits
    (20.0, ["gradcam", "ablationcam", "layercam"]),  # Score-CAM alone costs more than the rest
    (8.0, ["gradcam", "layercam"]),  # one explainer call carries every graph map
    (2.0, []),  # not even the explainer: predictions only
])
def test_budget_keeps_the_richest_set_that_fits(available, chosen):
    requested = ["scorecam", "gradcam", "ablationcam", "layercam"]
    kept, skipped = budget.select(COSTS, requested, rows=1, available_ms=available, render_ms=1.0)
    assert kept == chosen
    assert skipped == [m for m in requested if m not in chosen]
    assert budget.set_cost(COSTS, kept, 1, 1.0) <= available or not kept


def test_budget_prefers_what_was_asked_first_and_scales_with_rows():
    kept, _ = budget.select(COSTS, ["ablationcam", "scorecam"], rows=1, available_ms=60.0, render_ms=0.0)
    assert kept == ["ablationcam"]
    kept, _ = budget.select(COSTS, ["scorecam", "ablationcam"], rows=1, available_ms=60.0, render_ms=0.0)
    assert kept == ["scorecam"]
    assert budget.set_cost(COSTS, ["gradcam"], 3, 0.0) == 9.0 and budget.set_cost(COSTS, [], 3, 0.0) == 1.0


def test_upsampling_matches_torch_bilinear_half_pixel():
    torch = pytest.importorskip("torch")
    raw = np.random.default_rng(0).random((7, 5)).astype(np.float32)
    geometry = imaging.Geometry(45, 31, 0.0, 0.0, 45.0, 31.0)
    expected = torch.nn.functional.interpolate(torch.from_numpy(raw)[None, None].double(), size=(45, 31),
                                               mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(heatmaps.upsample(raw, geometry), expected, rtol=1e-6, atol=1e-6)


def test_map_covers_the_center_crop_of_the_original_image():
    torch = pytest.importorskip("torch")
    preprocess = Preprocess(resize_shorter_side=37, crop=(32, 32), scale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3)
    prepared = imaging.prepare_image(Image.fromarray(rgb_image(74, 90)), preprocess)
    g = prepared.geometry
    # 74 -> 37 halves the image; the 32-pixel crop starts 2 resized pixels in: rows 4..68 of the original.
    assert (g.height, g.width, g.box_top, g.box_height) == (74, 90, 4.0, 64.0)
    raw = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    heat = heatmaps.upsample(heatmaps.normalize(raw), g)
    top, left = int(g.box_top), int(g.box_left)
    inside = torch.nn.functional.interpolate(torch.from_numpy(heatmaps.normalize(raw))[None, None].double(),
                                             size=(64, int(g.box_width)), mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
    assert g.box_left == left  # an integer offset here, so the comparison is exact
    np.testing.assert_allclose(heat[top:top + 64, left:left + int(g.box_width)], inside, atol=1e-6)
    assert heat[:top].max() == 0 and heat[top + 64:].max() == 0  # what the model never saw stays cold


def test_normalisation_and_colormap():
    m = heatmaps.normalize(np.asarray([[-1.0, 0.0], [1.0, 3.0]], np.float32))
    np.testing.assert_allclose(m, [[0, 0], [1 / (3 + 1e-7), 3 / (3 + 1e-7)]], rtol=1e-6)
    colours = heatmaps.jet(np.asarray([0.0, 0.5, 1.0], np.float32))
    assert colours[0].argmax() == 2 and colours[2].argmax() == 0  # blue for cold, red for hot


def test_preprocessing_resize_rule_is_torchvisions():
    assert imaging.resized_size(45, 70, 37) == (37, 57)
    assert imaging.resized_size(70, 45, 37) == (57, 37)
    assert imaging.resized_size(37, 37, 37) == (37, 37)


def test_batcher_keeps_rows_apart_and_counts():
    calls = []

    def run(feed):
        calls.append(len(feed["x"]))
        return {"y": feed["x"] * 2 + 1}

    batcher = Batcher("double", run, max_batch=5, max_delay_s=600.0, max_queue=5)
    try:
        futures = [batcher.submit({"x": np.full((rows, 2), i, np.float32)}) for i, rows in enumerate([2, 3])]
        results = [f.result(timeout=30) for f in futures]
        assert calls == [5]
        assert results[0].outputs["y"].tolist() == [[1, 1], [1, 1]] and results[1].outputs["y"].shape == (3, 2)
        assert np.all(results[1].outputs["y"] == 3) and results[0].batch_rows == 5
        with pytest.raises(RequestError) as error:
            batcher.submit({"x": np.zeros((6, 2), np.float32)})
        assert error.value.code.name == "RESOURCE_EXHAUSTED"
    finally:
        batcher.close()
    with pytest.raises(RequestError) as error:
        batcher.submit({"x": np.zeros((1, 2), np.float32)})
    assert error.value.code.name == "UNAVAILABLE"


@pytest.mark.parametrize("requests", [1, 3])
def test_batcher_frees_a_requests_arrays_without_the_cycle_collector(requests):
    """A reference cycle through the future would keep every request's pixels and outputs alive
    until Python's cyclic collector happens to run: memory that grows with load, then drops."""
    batcher = Batcher("free", lambda feed: {"y": feed["x"] + 1}, max_batch=requests, max_delay_s=600.0,
                      max_queue=requests)
    gc.disable()
    try:
        inputs = [np.zeros((1, 1000), np.float32) for _ in range(requests)]
        futures = [batcher.submit({"x": x}) for x in inputs]
        outputs = [f.result(timeout=30).outputs["y"] for f in futures]
        refs = [weakref.ref(a) for a in inputs + outputs]
        del inputs, futures, outputs
        for _ in range(500):  # the worker thread lets go of the batch right after the last result
            if all(ref() is None for ref in refs):
                break
            time.sleep(0.01)
        assert [ref() is None for ref in refs] == [True] * len(refs)
    finally:
        gc.enable()
        batcher.close()


def test_batcher_failure_reaches_every_waiting_request():
    def run(feed):
        raise RuntimeError("boom")

    batcher = Batcher("broken", run, max_batch=2, max_delay_s=600.0, max_queue=2)
    try:
        futures = [batcher.submit({"x": np.zeros((1, 1))}) for _ in range(2)]
        for future in futures:
            with pytest.raises(RuntimeError, match="boom"):
                future.result(timeout=30)
    finally:
        batcher.close()


def test_input_gradient_methods_that_share_a_relu_rule_share_a_row():
    costs = budget.Costs(predict_ms=1.0, explainer_ms=3.0, input_ms=20.0)
    assert budget.set_cost(costs, ["guided_backprop"], rows=1, render_ms=0.0) == 20.0  # no explainer call
    assert budget.set_cost(costs, ["guided_backprop", "guided_gradcam"], rows=2, render_ms=0.0) == 40.0
    assert budget.set_cost(costs, ["saliency", "guided_gradcam", "gradcam"], rows=1, render_ms=1.0) == 46.0


def test_requested_methods():
    assert methods.requested([]) == ["gradcam"]
    assert methods.requested([pb.METHOD_NONE]) == []
    assert methods.requested([pb.SCORECAM, pb.CAM, pb.SCORECAM]) == ["scorecam", "cam"]
    for bad in ([pb.METHOD_NONE, pb.CAM], [pb.METHOD_UNSPECIFIED], [99]):
        with pytest.raises(RequestError):
            methods.requested(bad)


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def test_without_gradient_free_module_the_methods_are_skipped_not_available(tiny_model_dir, monkeypatch):
    from server.loaded_model import LoadedModel
    from server.model_info import load_model_info
    from server.pipeline import Pipeline
    from server.repository import Repository

    monkeypatch.delitem(sys.modules, "server.gradient_free", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Blocker("server.gradient_free"), *sys.meta_path])
    cfg = config(max_delay_ms=0.0)
    model = LoadedModel(load_model_info(tiny_model_dir), cfg)
    try:
        assert "ablationcam" not in model.methods and "scorecam" not in model.methods
        request = pb.ExplainRequest(model=model.name, image=encode(rgb_image(20, 20)),
                                    methods=[pb.ABLATIONCAM, pb.GRADCAM, pb.SCORECAM])
        response = Pipeline(Repository({model.name: model}), cfg).explain(request)
    finally:
        model.close()
    assert [h.method for h in response.heatmaps] == [pb.GRADCAM]
    assert [(s.method, s.reason) for s in response.skipped] == [(pb.ABLATIONCAM, pb.Skipped.NOT_AVAILABLE),
                                                                (pb.SCORECAM, pb.Skipped.NOT_AVAILABLE)]
    assert "not installed" in response.skipped[0].detail



@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_decode_gives_upright_rgb_for_any_mode(mode):
    base = Image.fromarray(rgb_image(12, 18))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
        assert image.mode.startswith("I;16")
        data = encode(np.asarray(image))
    else:
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        buffer = io.BytesIO()
        base.convert(mode).save(buffer, format=fmt)
        data = buffer.getvalue()
    decoded = imaging.decode(data, 10_000)
    assert decoded.mode == "RGB" and decoded.size == (18, 12)
    if mode in ("L", "I;16"):  # 16-bit grey is scaled, not clipped to white
        np.testing.assert_allclose(np.asarray(decoded)[..., 0], np.asarray(base.convert("L")), atol=1)


def test_server_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch=0"):
        config(max_batch=0)


def test_serve_options_reach_the_config_and_the_sessions(tiny_model_dir):
    import argparse

    from server.cli import config_from_args, register
    from server.config import ServerConfig
    from server.repository import load_repository

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    defaults = config_from_args(parser.parse_args(["serve", "--models", str(tiny_model_dir)]))
    assert defaults == ServerConfig()
    chosen = config_from_args(parser.parse_args(["serve", "--models", str(tiny_model_dir), "--spin",
                                                 "--max-delay-ms", "3"]))
    assert chosen.spin is True and chosen.max_delay_ms == 3.0
    model = load_repository(tiny_model_dir, chosen).get("tiny")
    for session in (model.explainer, model.head, model.forward):
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
