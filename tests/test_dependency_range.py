"""The protobuf/grpcio range of pyproject.toml holds at both ends.

The dev environment resolves next to tritonclient[grpc] (protobuf 6.x); the slow tests install each end
of the range with ``pip install --target`` (from the package index) and run the server tests in a
subprocess with that folder first on PYTHONPATH: the lowest versions pyproject allows, and the newest
protobuf 7.x with grpcio 1.85's health checking and reflection (which require protobuf 7).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: (name, requirements, expected protobuf major); the lowest end is pyproject's lower bounds exactly.
ENDS = {
    "lowest": (["protobuf==6.33.5", "grpcio==1.81.1", "grpcio-health-checking==1.81.1",
                "grpcio-reflection==1.81.1"], 6),
    "protobuf-7": (["protobuf>=7,<8", "grpcio-health-checking>=1.85.1", "grpcio-reflection>=1.85.1"], 7),
}

#: What pip says when the package index cannot be reached (not when a requirement cannot be met).
UNREACHABLE = re.compile(r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
                         r"Network is unreachable|Could not fetch URL|ConnectTimeout|ProxyError")

VERSIONS = ("import json, importlib.metadata as m; "
            "print(json.dumps({p: m.version(p) for p in "
            "('protobuf', 'grpcio', 'grpcio-health-checking', 'grpcio-reflection')}))")


def _major(text: str) -> int:
    return int(text.split(".")[0])


#: Installed with --no-deps for their data files only (bench/evaluate_photos.py says so): their unmet
#: requirements are expected, and say nothing about onnxcam's range.
DATA_ONLY = ("foolbox ", "imgaug ")


def test_pip_check_passes_in_this_environment():
    """Every installed distribution's requirements are met: onnxcam's range next to tritonclient's."""
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    problems = [line for line in result.stdout.splitlines()
                if line.strip() and not line.startswith(DATA_ONLY) and line.strip() != "No broken requirements found."]
    assert result.returncode == 0 or (not problems and not result.stderr.strip()), result.stdout + result.stderr


def test_tritonclient_resolved_to_a_current_release():
    """The dev extra's tritonclient[grpc]>=2.73 was not given up for an old release (the 2.41 fallback)."""
    try:
        installed = version("tritonclient")
    except PackageNotFoundError:
        pytest.skip("tritonclient is not installed (dev extra)")
    assert tuple(int(p) for p in installed.split(".")[:2]) >= (2, 73), installed
    assert _major(version("protobuf")) in (6, 7)


def test_stubs_import_without_warnings():
    """The committed stubs (gencode 6.33.5) load on this runtime with no version warning."""
    script = ("import warnings; warnings.simplefilter('error')\n"
              "from onnxcam.proto import explainer_pb2, explainer_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("end", sorted(ENDS))
def test_server_tests_pass_at_each_end_of_the_range(end, tmp_path):
    requirements, major = ENDS[end]
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              "--only-binary", ":all:", "--target", str(target), *requirements],
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        if UNREACHABLE.search(install.stderr):
            pytest.skip(f"the package index is unreachable, cannot install {requirements}: "
                        f"{install.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip install --target {requirements} failed:\n{install.stderr[-3000:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)}
    probe = subprocess.run([sys.executable, "-c", VERSIONS], env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    versions = json.loads(probe.stdout)
    assert _major(versions["protobuf"]) == major, versions
    if end == "lowest":
        assert versions == {"protobuf": "6.33.5", "grpcio": "1.81.1", "grpcio-health-checking": "1.81.1",
                            "grpcio-reflection": "1.81.1"}
    # pip check is left out there: the folder's protobuf 7 is outside grpcio-tools 1.81.1's range on purpose
    tests = ["tests/test_server.py", "tests/test_open_inference.py",
             "tests/test_dependency_range.py::test_stubs_import_without_warnings"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q", "-m", "not slow",
                          *tests], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"{versions}\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert " passed" in run.stdout.strip().splitlines()[-1]
