"""Where an export's weights come from is said at export time and recorded in the model folder: a
torchvision ``--arch`` without ``--weights`` is random, loudly; ``--weights`` never downloads."""

from __future__ import annotations

import json
import logging

import onnx
import pytest
from test_cli_errors import assert_one_error, onnxcam

from onnxcam import contract


def test_weights_that_would_need_a_download_are_refused_with_what_weights_accepts(tmp_path):
    result = onnxcam("export", "--arch", "resnet50", "--weights", "IMAGENET1K_V2", "--out", str(tmp_path / "r"))
    line = assert_one_error(result, 2, "--weights IMAGENET1K_V2: no such file", "takes a state_dict file",
                            "onnxcam never downloads weights")
    assert "get_model('resnet50', weights='IMAGENET1K_V2')" in line  # how to get the file once, yourself
    assert not (tmp_path / "r").exists()


def test_a_weights_file_that_is_not_a_state_dict_is_one_line(tmp_path):
    pytest.importorskip("torch")
    bad = tmp_path / "weights.pt"
    bad.write_text("not a torch file")
    result = onnxcam("export", "--arch", "squeezenet1_1", "--weights", str(bad), "--out", str(tmp_path / "s"))
    assert_one_error(result, 2, f"cannot read weights {bad} as a torch.save file")


def test_random_weights_are_said_at_export_time_and_in_the_metadata(tmp_path, caplog):
    pytest.importorskip("torch")
    out = tmp_path / "squeezenet"
    result = onnxcam("export", "--arch", "squeezenet1_1", "--input-size", "64", "--no-input-gradients",
                     "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "squeezenet1_1 gets RANDOM weights" in warning[0]
    assert "nothing is downloaded" in warning[0] and "--weights FILE" in warning[0]
    assert "RANDOM WEIGHTS" in result.stdout
    both = result.stdout + result.stderr
    assert both.count("check passed") == 1, both  # the summary is printed once (stdout), not logged as well
    assert json.loads((out / "model.json").read_text())["weights"] == contract.WEIGHTS_RANDOM
    graph = onnx.load(str(out / contract.EXPLAINER_FILE), load_external_data=False)
    metadata = {entry.key: entry.value for entry in graph.metadata_props}
    assert json.loads(metadata["onnxcam.weights"]) == contract.WEIGHTS_RANDOM  # a bare .onnx file says it too

    from test_server_helpers import config

    from server.repository import load_repository

    with caplog.at_level(logging.WARNING, logger="onnxcam.server"):
        load_repository(out, config()).close()
    assert any("squeezenet has RANDOM weights" in record.getMessage() for record in caplog.records)


def test_the_python_api_records_weights_it_was_not_told_as_unspecified(tiny_model_dir):
    assert json.loads((tiny_model_dir / "model.json").read_text())["weights"] == contract.WEIGHTS_UNSPECIFIED


def test_packaged_weights_are_the_sources_pretrained_ones():
    pytest.importorskip("torch")
    from exporter.sources import PRETRAINED
    from exporter.weights import PACKAGED, weights_origin

    assert set(PACKAGED) == set(PRETRAINED)
    assert all(PACKAGED[name] == package.replace("_", "-") for name, (package, _) in PRETRAINED.items())
    assert weights_origin("efficientnet_lite0", None, None).startswith("ImageNet")
    assert weights_origin("resnet50", None, "r.pt") == "file r.pt"
    assert weights_origin(None, "net.py:build", None) == "as net.py:build builds the model"
