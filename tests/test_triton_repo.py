"""The Triton model repository written from an exported folder, checked against Triton's own ModelConfig
schema (tritonclient's model_config_pb2, protobuf text format) and the ONNX graphs; and the client's
helper that turns a raw map computed outside onnxcam serve into the PNGs Explain returns."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from test_server_helpers import encode, make_repository, rgb_image, running_server

from onnxcam import contract
from onnxcam.client import ExplainerClient, heatmap_pngs
from onnxcam.preprocess import preprocess, read_spec

triton_config = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                    reason="tritonclient[grpc] (dev extra) carries Triton's ModelConfig schema")

ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


@pytest.fixture(scope="module")
def repo(tiny_model_dir, tmp_path_factory):
    """Written through the CLI's hook, as ``onnxcam export --triton-repo`` and ``models build`` do."""
    from exporter.cli import write_triton_repo

    out = tmp_path_factory.mktemp("triton")
    write_triton_repo(tiny_model_dir, argparse.Namespace(triton_repo=out, triton_max_batch=4, json=False))
    return out


def graph_tensors(graph) -> dict[str, tuple[str, list[int]]]:
    initializers = {i.name for i in graph.initializer}
    values = [v for v in graph.input if v.name not in initializers] + list(graph.output)
    return {v.name: (ONNX_TYPES[v.type.tensor_type.elem_type],
                     [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
            for v in values}


def test_repository_layout(repo, tiny_model_dir):
    expected = {"tiny": contract.EXPLAINER_FILE, "tiny_head": contract.HEAD_FILE,
                "tiny_forward": contract.FORWARD_FILE}
    if (tiny_model_dir / contract.INPUT_GRADIENTS_FILE).exists():
        expected["tiny_input_gradients"] = contract.INPUT_GRADIENTS_FILE
    assert {p.name for p in repo.iterdir()} == set(expected)
    labels = json.loads((tiny_model_dir / "model.json").read_text())["labels"]
    for name, graph in expected.items():
        assert (repo / name / "1" / "model.onnx").read_bytes() == (tiny_model_dir / graph).read_bytes()
        assert (repo / name / "labels.txt").read_text().splitlines() == labels


def test_every_config_parses_with_tritons_schema_and_matches_its_graph(repo):
    for folder in sorted(repo.iterdir()):
        config = text_format.Parse((folder / "config.pbtxt").read_text(), triton_config.ModelConfig())
        assert config.name == folder.name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
        graph = onnx.load(str(folder / "1" / "model.onnx")).graph
        tensors = graph_tensors(graph)
        declared = list(config.input) + list(config.output)
        assert {t.name for t in declared} == set(tensors), folder.name
        assert {t.name for t in config.input} == {v.name for v in graph.input} - {i.name for i in graph.initializer}
        for tensor in declared:
            data_type, shape = tensors[tensor.name]
            assert triton_config.DataType.Name(tensor.data_type) == data_type, (folder.name, tensor.name)
            assert shape[0] == -1, (folder.name, tensor.name)  # the batch dimension Triton adds
            if len(shape) == 1:  # [N]: one value per row, dims [1] reshaped to a scalar
                assert list(tensor.dims) == [1] and tensor.HasField("reshape") and not tensor.reshape.shape
            else:
                assert list(tensor.dims) == shape[1:] and not tensor.HasField("reshape"), (folder.name, tensor.name)
        logits = next(o for o in config.output if o.name == contract.OUTPUT_LOGITS)
        assert logits.label_filename == "labels.txt"


def test_explainer_config_names_the_contract(repo):
    config = text_format.Parse((repo / "tiny" / "config.pbtxt").read_text(), triton_config.ModelConfig())
    dims = {t.name: list(t.dims) for t in list(config.input) + list(config.output)}
    assert dims["pixels"] == [3, 32, 32] and dims["target"] == [1]
    assert dims["logits"] == [10] and dims["cam_gradcam"] == [8, 8] and dims["activations"] == [24, 8, 8]


def test_export_and_models_build_take_the_option():
    from onnxcam.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["export", "--arch", "resnet18", "--out", "m", "--triton-repo", "t"])
    assert str(args.triton_repo) == "t" and args.triton_max_batch == 8
    args = parser.parse_args(["models", "build", "--triton-repo", "t", "--triton-max-batch", "2"])
    assert str(args.triton_repo) == "t" and args.triton_max_batch == 2


def test_client_turns_a_triton_style_raw_map_into_explains_pngs(tiny_model_dir, tmp_path):
    """The explainer graph run as Triton runs it (the repository's model.onnx, batch 1, pixels from
    onnxcam.preprocess), then heatmap_pngs: the same map and the same PNG bytes as Explain."""
    png = encode(rgb_image(45, 60, seed=9))
    spec = read_spec(tiny_model_dir)
    session = ort.InferenceSession(str(tiny_model_dir / contract.EXPLAINER_FILE), providers=["CPUExecutionProvider"])
    (raw,) = session.run(["cam_gradcam"], {"pixels": preprocess(png, spec)[None],
                                           "target": np.asarray([-1], np.int64)})
    with running_server(make_repository(tiny_model_dir, tmp_path / "repo")) as server, \
            ExplainerClient(server.address, timeout=60) as client:
        response = client.explain(png, "tiny", methods=["gradcam"], raw=True, heatmap_png=True, overlay_png=True)
    heatmap = response.heatmaps[0]
    served = np.asarray(heatmap.raw.values, np.float32).reshape(heatmap.raw.height, heatmap.raw.width)
    assert np.abs(raw[0] - served).max() <= 1e-5
    shown, overlay = heatmap_pngs(served, png, tiny_model_dir, overlay_png=True)
    assert shown == heatmap.heatmap_png and overlay == heatmap.overlay_png
    shown_local, _ = heatmap_pngs(raw[0], png, tiny_model_dir / contract.EXPLAINER_FILE)  # the graph's metadata
    assert shown_local.startswith(b"\x89PNG")
