"""TLS, mutual TLS and bearer tokens on a real server on loopback, called with the real client and the
CLI. Certificates are made at test time (trustme): a CA for the server, a client certificate it signs,
and a second CA nobody trusts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_server_helpers import running_server

from onnxcam.client import ExplainerClient, build_request
from onnxcam.proto import grpc_service_pb2 as oip
from onnxcam.proto import grpc_service_pb2_grpc as oip_grpc
from server import auth

trustme = pytest.importorskip("trustme")

ROOT = Path(__file__).resolve().parent.parent
TOKENS = ("s3cret-token-ALPHA-7f3a9c", "s3cret-token-BETA-0b21de")
PIXELS = np.zeros((3, 32, 32), np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """PEM files: the server's chain and key (localhost, 127.0.0.1), its CA, a client pair and a stranger CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("client@example.org")
    files = {"ca": ca.cert_pem, "stranger_ca": stranger.cert_pem, "server_key": server_cert.private_key_pem,
             "client_key": client_cert.private_key_pem}
    paths = {name: folder / f"{name}.pem" for name in (*files, "server_chain", "client_chain")}
    for name, blob in files.items():
        blob.write_to_path(str(paths[name]))
    for name, cert in (("server_chain", server_cert), ("client_chain", client_cert)):
        paths[name].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    token_file = folder / "tokens"
    token_file.write_text("# operators' tokens\n" + "\n".join(TOKENS) + "\n\n")
    paths["tokens"] = token_file
    return paths


@pytest.fixture(scope="module")
def secured(tiny_model_dir, pki):
    """TLS and tokens (the usual production setup)."""
    with running_server(tiny_model_dir, tls_cert=str(pki["server_chain"]), tls_key=str(pki["server_key"]),
                        auth_token_file=str(pki["tokens"]), log_requests=True) as server:
        yield server


def client(server, pki, **options) -> ExplainerClient:
    options.setdefault("tls_ca", pki["ca"])
    return ExplainerClient(server.address, timeout=30, retry=False, **options)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code()


def test_a_good_token_over_tls_is_served_and_health_needs_none(secured, pki):
    with client(secured, pki, token=TOKENS[1]) as good:
        response = good.explain(PIXELS, "tiny", methods=["gradcam"])
        assert response.predictions and response.heatmaps
        assert [m.name for m in good.list_models()] == ["tiny"]
        answers = list(good.explain_stream([build_request(PIXELS, "tiny", request_id=str(i)) for i in range(3)]))
        assert [a.request_id for a in answers] == ["0", "1", "2"] and not any(a.HasField("error") for a in answers)
    with client(secured, pki) as anonymous:
        assert anonymous.health() == "SERVING"  # orchestrators' probes carry no token
        assert anonymous.health("onnxcam.v1.Explainer") == "SERVING"


def test_missing_or_wrong_token_is_unauthenticated_on_every_service(secured, pki):
    for token in (None, "wrong-token", TOKENS[0] + "x", TOKENS[0][:-1]):
        with client(secured, pki, token=token) as caller:
            calls = {
                "Explain": lambda c=caller: c.explain(PIXELS, "tiny"),
                "ListModels": lambda c=caller: c.list_models(),
                "GetModelMetadata": lambda c=caller: c.metadata("tiny"),
                "ExplainStream": lambda c=caller: list(c.explain_stream([build_request(PIXELS, "tiny")])),
                "ServerLive": lambda c=caller: oip_grpc.GRPCInferenceServiceStub(c.channel).ServerLive(
                    oip.ServerLiveRequest(), timeout=30),
            }
            for name, call in calls.items():
                assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED, (name, token)
    with client(secured, pki) as anonymous:
        with pytest.raises(grpc.RpcError) as failure:
            anonymous.list_models()
        assert "authorization: Bearer" in failure.value.details()  # says what to send


def test_the_token_is_read_from_any_case_of_the_scheme_and_compared_whole():
    assert auth.presented_token([("authorization", "bearer abc")]) == b"abc"
    assert auth.presented_token([("Authorization", "Bearer  abc ")]) == b"abc"
    assert auth.presented_token([("authorization", "Basic abc")]) is None
    assert auth.presented_token([("x-other", "Bearer abc")]) is None
    assert auth.is_valid(b"abc", [b"zzz", b"abc"]) and not auth.is_valid(b"ab", [b"abc"])
    assert not auth.is_valid(None, [b"abc"])


def test_token_files_with_no_token_or_a_spaced_line_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no token"):
        auth.read_tokens(empty)
    spaced = tmp_path / "spaced"
    spaced.write_text("one token\n")
    with pytest.raises(ValueError, match="line 1"):
        auth.read_tokens(spaced)


def test_plaintext_and_a_stranger_ca_are_refused_on_the_tls_port(secured, pki):
    with ExplainerClient(secured.address, timeout=10, retry=False) as plaintext:
        assert code_of(plaintext.health) == grpc.StatusCode.UNAVAILABLE
    with client(secured, pki, tls_ca=pki["stranger_ca"]) as fooled:
        assert code_of(fooled.health) == grpc.StatusCode.UNAVAILABLE


def test_reflection_is_off_with_tokens_unless_asked_for_and_then_needs_a_token(secured, pki, tiny_model_dir):
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with client(secured, pki, token=TOKENS[0]) as good:
        stub = reflection_pb2_grpc.ServerReflectionStub(good.channel)
        assert code_of(lambda: list(stub.ServerReflectionInfo(iter([request]), timeout=30))) == \
            grpc.StatusCode.UNIMPLEMENTED
    with (running_server(tiny_model_dir, auth_token_file=str(pki["tokens"]), reflection=True) as server,
          ExplainerClient(server.address, retry=False) as anonymous,
          ExplainerClient(server.address, retry=False, token=TOKENS[0]) as good):
        stub = reflection_pb2_grpc.ServerReflectionStub(anonymous.channel)
        assert code_of(lambda: list(stub.ServerReflectionInfo(iter([request]), timeout=30))) == \
            grpc.StatusCode.UNAUTHENTICATED
        stub = reflection_pb2_grpc.ServerReflectionStub(good.channel)
        (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=30)
        assert "onnxcam.v1.Explainer" in {s.name for s in answer.list_services_response.service}
        assert good.health() == anonymous.health() == "SERVING"  # plaintext with tokens works too (loopback)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tiny_model_dir, pki):
    with running_server(tiny_model_dir, tls_cert=str(pki["server_chain"]), tls_key=str(pki["server_key"]),
                        tls_client_ca=str(pki["ca"])) as server:
        with client(server, pki) as without_certificate:
            assert code_of(without_certificate.health) == grpc.StatusCode.UNAVAILABLE
        with client(server, pki, tls_client_cert=pki["client_chain"], tls_client_key=pki["client_key"]) as member:
            assert member.explain(PIXELS, "tiny").predictions
            assert member.health() == "SERVING"


def _explain_cli(server, pki, *options: str, token_env: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ONNXCAM_TOKEN"} | {"PYTHONUNBUFFERED": "1"}
    if token_env is not None:
        env["ONNXCAM_TOKEN"] = token_env
    photo = ROOT / "onnxcam" / "demo_photos" / "chelsea.jpg"
    return subprocess.run([sys.executable, "-m", "onnxcam.cli", "explain", "--server", server.address, "--model",
                           "tiny", "--method", "none", "--no-retry", *options, str(photo)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)


def test_the_cli_takes_the_ca_and_a_token_from_a_file_or_the_environment(secured, pki):
    from test_cli_errors import assert_one_error

    from_file = _explain_cli(secured, pki, "--tls-ca", str(pki["ca"]), "--token-file", str(pki["tokens"]))
    assert from_file.returncode == 0, from_file.stderr
    assert "chelsea.jpg on tiny" in from_file.stdout
    from_env = _explain_cli(secured, pki, "--tls-ca", str(pki["ca"]), token_env=TOKENS[1])
    assert from_env.returncode == 0, from_env.stderr
    refused = _explain_cli(secured, pki, "--tls-ca", str(pki["ca"]))
    assert_one_error(refused, 1, "UNAUTHENTICATED")
    plaintext = _explain_cli(secured, pki, token_env=TOKENS[0])
    assert_one_error(plaintext, 1, "UNAVAILABLE", "if it serves TLS, add --tls-ca")
    stranger = _explain_cli(secured, pki, "--tls-ca", str(pki["stranger_ca"]), token_env=TOKENS[0])
    assert_one_error(stranger, 1, "UNAVAILABLE", "certificate is not trusted")
    for result in (from_file, from_env, refused, plaintext, stranger):
        assert not any(token in result.stdout + result.stderr for token in TOKENS)


def test_tokens_never_reach_the_logs(secured, pki, caplog):
    caplog.set_level(logging.DEBUG)
    with client(secured, pki, token=TOKENS[0]) as good, client(secured, pki, token="wrong-" + TOKENS[1]) as bad:
        good.explain(PIXELS, "tiny")
        code_of(lambda: bad.explain(PIXELS, "tiny"))
    text = caplog.text
    assert "refused /onnxcam.v1.Explainer/Explain" in text and "explain model=tiny" in text  # the server did log
    assert not any(token in text for token in TOKENS)


def test_serve_refuses_unreadable_or_half_given_security_files_before_loading(pki, tmp_path):
    from test_cli_errors import assert_one_error, onnxcam

    missing = onnxcam("serve", "--models", str(tmp_path), "--port", "0", "--tls-cert", str(pki["server_chain"]),
                      "--tls-key", str(tmp_path / "no.key"), timeout=60)
    assert_one_error(missing, 2, "cannot read --tls-key")
    half = onnxcam("serve", "--models", str(tmp_path), "--port", "0", "--tls-client-ca", str(pki["ca"]), timeout=60)
    assert_one_error(half, 2, "mutual TLS is TLS first")
    (tmp_path / "tokens").write_text("# no token yet\n")
    empty = onnxcam("serve", "--models", str(tmp_path), "--port", "0", "--auth-token-file", str(tmp_path / "tokens"),
                    timeout=60)
    assert_one_error(empty, 2, "holds no token")
