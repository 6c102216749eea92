"""What an operator meets: log lines with time and level that keep third-party warnings, both reflection
services (v1 and v1alpha), and the client's gRPC retry policy for UNAVAILABLE and RESOURCE_EXHAUSTED."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from test_server_helpers import running_server

from onnxcam import logging_setup
from onnxcam.client import ExplainerClient

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


@pytest.fixture
def configured_logging():
    """The CLI's logging on a string, the test runner's handlers put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def configure(log_format: str) -> io.StringIO:
        stream = io.StringIO()
        logging_setup.configure(logging.INFO, log_format, stream)
        return stream

    yield configure
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logging.captureWarnings(False)


def test_log_lines_have_time_and_level_and_keep_third_party_warnings(configured_logging):
    stream = configured_logging("text")
    logging.getLogger("onnxcam.server").info("serving tiny")
    logging.getLogger("grpc._server").warning("exception calling application")
    logging.getLogger("onnxruntime").error("session failed")
    logging.getLogger("onnxscript.rewriter").info("applied a rewrite")  # third-party INFO chatter: dropped
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    lines = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(rf"{stamp} INFO onnxcam\.server: serving tiny", lines[0])
    assert re.fullmatch(rf"{stamp} WARNING grpc\._server: exception calling application", lines[1])
    assert re.fullmatch(rf"{stamp} ERROR onnxruntime: session failed", lines[2])
    assert "applied a rewrite" not in stream.getvalue()
    assert "WARNING py.warnings" in lines[3] and "an old API" in lines[3]


def test_warnings_are_logged_even_after_another_context_restored_showwarning(configured_logging):
    """A second configure still captures warnings when something (pytest, catch_warnings) put back the
    original showwarning while logging's capture was on record: captureWarnings(True) alone did nothing."""
    original = warnings.showwarning
    configured_logging("text")
    warnings.showwarning = original  # what a catch_warnings block around the first configure does on exit
    stream = configured_logging("text")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("still captured", UserWarning, stacklevel=1)
    assert "WARNING py.warnings" in stream.getvalue() and "still captured" in stream.getvalue()


def test_json_log_lines_carry_the_records_fields(configured_logging):
    stream = configured_logging("json")
    logging.getLogger("onnxcam.server.requests").info("explain ...", extra={"fields": {"code": "OK", "total_ms": 3}})
    logging.getLogger("grpc").warning("a %s", "warning")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "onnxcam.server.requests"
    assert first["code"] == "OK" and first["total_ms"] == 3 and first["time"].endswith("Z")
    assert second == {**second, "level": "WARNING", "logger": "grpc", "message": "a warning"}


def _reflect(channel: grpc.Channel, method: str, request: reflection_pb2.ServerReflectionRequest):
    call = channel.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    (answer,) = call(iter([request]), timeout=30)
    return answer


def test_reflection_answers_v1_and_v1alpha(tiny_model_dir):
    # v1's messages are v1alpha's on the wire, so v1alpha's classes (de)serialize a v1 call.
    with running_server(tiny_model_dir) as server, grpc.insecure_channel(server.address) as channel:
        for method in (V1_METHOD, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
            answer = _reflect(channel, method, reflection_pb2.ServerReflectionRequest(list_services=""))
            services = {s.name for s in answer.list_services_response.service}
            assert {"onnxcam.v1.Explainer", "inference.GRPCInferenceService", "grpc.health.v1.Health",
                    "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= services
        answer = _reflect(channel, V1_METHOD, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"))
        (blob,) = answer.file_descriptor_response.file_descriptor_proto
        described = descriptor_pb2.FileDescriptorProto.FromString(blob)
        assert described.package == "grpc.reflection.v1"
        assert described.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
        answer = _reflect(channel, V1_METHOD, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="onnxcam.v1.Explainer"))
        assert answer.file_descriptor_response.file_descriptor_proto  # the explainer's own proto, over v1


class FlakyHealth(health_pb2_grpc.HealthServicer):
    """Fails the first ``failures`` calls with ``code``, then answers SERVING; counts every attempt."""

    def __init__(self, failures: int, code: grpc.StatusCode) -> None:
        self.failures, self.code, self.calls = failures, code, 0

    def Check(self, request, context):  # noqa: N802 (gRPC's name)
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(self.code, "not now")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _flaky_server(servicer: FlakyHealth) -> tuple[grpc.Server, str]:
    server = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_the_client_retries_unavailable_and_resource_exhausted_unless_told_not_to(code):
    servicer = FlakyHealth(2, code)
    server, address = _flaky_server(servicer)
    try:
        with ExplainerClient(address, timeout=30) as client:
            assert client.health() == "SERVING"
        assert servicer.calls == 3  # two refusals retried by gRPC, the third try answered
        servicer.calls = 0
        with ExplainerClient(address, timeout=30, retry=False) as client, pytest.raises(grpc.RpcError) as failure:
            client.health()
        assert failure.value.code() == code and servicer.calls == 1
    finally:
        server.stop(0)


def test_the_client_does_not_retry_other_codes_or_past_its_attempts():
    for servicer in (FlakyHealth(1, grpc.StatusCode.INVALID_ARGUMENT), FlakyHealth(99, grpc.StatusCode.UNAVAILABLE)):
        server, address = _flaky_server(servicer)
        try:
            with ExplainerClient(address, timeout=30) as client, pytest.raises(grpc.RpcError) as failure:
                client.health()
            assert failure.value.code() == servicer.code
            assert servicer.calls == (1 if servicer.code == grpc.StatusCode.INVALID_ARGUMENT else 5)
        finally:
            server.stop(0)
