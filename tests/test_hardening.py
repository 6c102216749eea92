"""Reproductions from the second attack run (issue 17), each against a real server on loopback: the
refusals must carry the right status code and a clear message, and the server keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_server_helpers import config, encode, make_repository, png_from_chunks, rgb_image, running_server

from onnxcam.cli_errors import CliError
from onnxcam.client import ExplainerClient
from onnxcam.proto import explainer_pb2 as pb
from onnxcam.proto import grpc_service_pb2 as oip
from onnxcam.proto import grpc_service_pb2_grpc as oip_grpc
from server import imaging
from server.app import serve
from server.cli import image_formats
from server.config import ALLOWED_IMAGE_FORMATS, DEFAULT_MAX_IMAGE_PIXELS
from server.errors import RequestError
from server.repository import DuplicateModelError, load_repository

INPUT = (32, 32)
ALL_FORMATS = ALLOWED_IMAGE_FORMATS


def _edit(folder: Path, **changes) -> None:
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def models_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """tiny, nocam and broken (make_repository); ``claims1000``: the 10-class graphs with a model.json
    claiming 1000 classes; ``pathy``: a model.json from an export that recorded absolute paths."""
    root = make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo"))
    shutil.copytree(tiny_model_dir, root / "claims1000")
    _edit(root / "claims1000", name="claims1000", num_classes=1000, labels=[f"c{i}" for i in range(1000)])
    shutil.copytree(tiny_model_dir, root / "pathy")
    meta = json.loads((root / "pathy" / "model.json").read_text())
    _edit(root / "pathy", name="pathy", source={**meta["source"], "model_file": "/home/someone/nets/net.py:build",
                                                "weights": "C:\\Users\\someone\\weights\\net.pt"})
    return root


@pytest.fixture(scope="module")
def server(models_dir):
    with running_server(models_dir, image_formats=ALL_FORMATS) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with ExplainerClient(server.address, timeout=60) as c:
        yield c


def _status(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def _serves(client: ExplainerClient) -> None:
    """The server still answers a good request after a refusal."""
    assert client.explain(encode(rgb_image(24, 24)), "tiny").predictions


def test_a_graph_with_fewer_classes_than_model_json_claims_is_refused_at_load(server, client):
    reasons = {Path(folder).name: why for folder, why in server.repository.skipped.items()}
    assert "claims1000" in reasons
    assert "10 classes" in reasons["claims1000"] and "num_classes 1000" in reasons["claims1000"]
    assert "claims1000" not in [m.name for m in client.list_models()]


def test_two_folders_with_one_model_name_stop_the_start_naming_both(tiny_model_dir, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, root / "real")
    shutil.copytree(tiny_model_dir, root / "stray")
    _edit(root / "real", name="tiny")
    _edit(root / "stray", name="tiny")
    with pytest.raises(DuplicateModelError) as caught:
        load_repository(root, config())
    assert str(root / "real") in str(caught.value) and str(root / "stray") in str(caught.value)
    with pytest.raises(CliError) as refused:  # `onnxcam serve` says it in one line and never listens
        serve(root, config(port=0))
    assert "same model name" in str(refused.value) and "stray" in str(refused.value)


def test_a_tensor_of_huge_finite_values_is_refused_not_answered_with_nan(client):
    request = pb.ExplainRequest(model="tiny", tensor=pb.Tensor(shape=[3, *INPUT], data=[3e38] * (3 * 32 * 32)),
                                methods=[pb.GRADCAM, pb.LAYERCAM], raw=True)
    error = _status(client.explain_request, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not finite" in error.details() and "3e+38" in error.details()
    _serves(client)


def test_a_100_kb_model_name_gets_not_found_with_a_short_message(server, client):
    name = "m" * 100_000
    for call in (lambda: client.explain(encode(rgb_image(8, 8)), name), lambda: client.metadata(name)):
        error = _status(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        assert "100000 characters" in error.details() and len(error.details()) < 1000
    with grpc.insecure_channel(server.address) as channel:
        error = _status(oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer,
                        oip.ModelInferRequest(model_name=name), timeout=30)
    assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 1000
    _serves(client)


def test_a_huge_tensor_shape_is_quoted_short(client):
    request = pb.ExplainRequest(model="tiny", tensor=pb.Tensor(shape=[1] * 100_000, data=[0.0] * 3))
    error = _status(client.explain_request, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "(100000 entries)" in error.details()
    assert len(error.details()) < 1000


def test_open_inference_bounds_the_outputs_list(server, client):
    request = oip.ModelInferRequest(model_name="tiny", outputs=[
        oip.ModelInferRequest.InferRequestedOutputTensor(name="logits")] * 100_000)
    with grpc.insecure_channel(server.address) as channel:
        error = _status(oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "100000 outputs requested" in error.details()
    _serves(client)


def test_metadata_gives_base_names_never_the_exporting_machine_s_paths(client):
    source = client.metadata("pathy").source
    assert source["model_file"] == "net.py:build"
    assert source["weights"] == "net.pt"


@pytest.mark.parametrize("targets, phrase", [([3] * 1_000_000, "1000000 targets given (1 distinct)"),
                                             ([0, 1] * 9, "18 targets given (2 distinct)")])
def test_the_target_limit_counts_every_entry_not_only_distinct_ones(client, targets, phrase):
    error = _status(client.explain, encode(rgb_image(8, 8)), "tiny", targets=targets)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and phrase in error.details()
    _serves(client)


def test_a_long_list_of_one_method_is_refused(client):
    error = _status(client.explain_request, pb.ExplainRequest(model="tiny", image=encode(rgb_image(8, 8)),
                                                              methods=[pb.GRADCAM] * 1000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "1000 methods given" in error.details()


def test_the_bomb_refusal_quotes_the_server_s_limit_not_pillow_s(client):
    error = _status(client.explain, png_from_chunks(100_000, 100_000), "tiny")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {DEFAULT_MAX_IMAGE_PIXELS}" in error.details() and "--max-image-pixels" in error.details()
    assert "100000x100000" in error.details() and "178956970" not in error.details()


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_an_operator_can_allow_gif_bmp_and_tiff(client, fmt):
    response = client.explain(encode(rgb_image(24, 24), fmt), "tiny")
    assert response.image_height == 24 and response.heatmaps


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_gif_bmp_and_tiff_are_refused_by_default_and_named(fmt):
    with pytest.raises(RequestError) as caught:
        imaging.decode(encode(rgb_image(8, 8), fmt), DEFAULT_MAX_IMAGE_PIXELS)
    assert f"unsupported image format {fmt}" in caught.value.message and "--image-formats" in caught.value.message


def test_image_formats_option():
    assert image_formats("jpeg,png,webp,gif,bmp,tiff") == ALL_FORMATS
    assert image_formats("JPG, tif") == ("JPEG", "TIFF")
    for bad in ("jpeg,svg", ""):
        with pytest.raises(Exception, match="choose from"):
            image_formats(bad)
    with pytest.raises(ValueError, match="image_formats"):
        config(image_formats=("PNG", "PSD"))


def test_webp_declared_size_is_read_from_the_header():
    data = encode(rgb_image(20, 30), "WEBP")
    assert imaging._declared_size(data) == (30, 20)
    lossless = encode(rgb_image(20, 30), "WEBP", lossless=True)
    assert imaging._declared_size(lossless) == (30, 20)


def test_out_of_range_class_on_a_model_with_matching_graphs_is_invalid_argument(client):
    error = _status(client.explain, encode(rgb_image(8, 8)), "tiny", targets=[500])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in error.details()
    assert np.isfinite([p.score for p in client.explain(encode(rgb_image(8, 8)), "tiny").predictions]).all()
