"""Property-based fuzzing of image decoding and request validation (issue 17, item 5).

Every input must get a defined answer: OK (with finite numbers only) or a status that says the input was refused
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED...), never INTERNAL or UNKNOWN, and the server keeps
serving. Decoding is called directly for many image inputs; whole requests go through one real
server on loopback with a real client. The examples are derandomised, so CI runs the same inputs
every time; bench/fuzz.py runs random ones for as long as asked.
"""

from __future__ import annotations

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis")

from fuzz_inputs import explain_requests, image_bytes, non_finite_fields  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from test_server_helpers import make_repository, running_server  # noqa: E402

from onnxcam.client import ExplainerClient  # noqa: E402
from onnxcam.proto import explainer_pb2 as pb  # noqa: E402
from server import imaging  # noqa: E402
from server.errors import RequestError  # noqa: E402
from server.model_info import Preprocess  # noqa: E402

INPUT = (32, 32)
#: Smaller than the server's default, so that rewritten dimension fields are refused quickly.
MAX_PIXELS = 4_000_000
#: Statuses no input may cause: they mean the server failed, not that it refused the input.
FAILURES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS}
CI = dict(deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
#: Finite values the network overflows on.
HUGE_TENSOR = pb.ExplainRequest(model="tiny", tensor=pb.Tensor(shape=[3, *INPUT], data=[3e38, -3e38] * (3 * 16 * 32)),
                                methods=[pb.GRADCAM], raw=True)
PREPROCESS = Preprocess(resize_shorter_side=36, crop=INPUT, scale=1 / 255, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225))


@settings(max_examples=1500, **CI)
@given(data=image_bytes)
def test_decoding_any_bytes_either_works_or_is_invalid_argument(data: bytes) -> None:
    try:
        image = imaging.decode(data, MAX_PIXELS)
    except RequestError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.message
        return
    prepared = imaging.prepare_image(image, PREPROCESS)
    assert prepared.pixels.shape == (3, *INPUT)
    assert prepared.rgb.shape == (image.height, image.width, 3)


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    root = make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo"))
    with running_server(root, max_image_pixels=MAX_PIXELS) as server, \
            ExplainerClient(server.address, timeout=60) as connected:
        yield connected


def test_random_requests_get_a_defined_status_and_the_server_keeps_serving(client) -> None:
    codes: dict[str, int] = {}

    @settings(max_examples=250, **CI)
    @given(request=explain_requests("tiny", *INPUT, num_classes=10))
    @example(request=HUGE_TENSOR)  # found by the attack run: OK with NaN scores and maps, before the fix
    def one(request: pb.ExplainRequest) -> None:
        try:
            response = client.explain_request(request)
            code = grpc.StatusCode.OK
            assert not non_finite_fields(response), non_finite_fields(response)
        except grpc.RpcError as error:
            code = error.code()
            assert code not in FAILURES, f"{code.name}: {error.details()}"
            assert error.details()
        codes[code.name] = codes.get(code.name, 0) + 1

    one()
    assert client.health() == "SERVING"
    assert client.explain_request(pb.ExplainRequest(model="tiny", tensor=pb.Tensor(
        shape=[3, *INPUT], data=[0.1] * (3 * INPUT[0] * INPUT[1])))).predictions
    assert codes.get("OK") and codes.get("INVALID_ARGUMENT"), codes  # both sides of validation were reached
