"""A longer fuzz run of the server's input handling than CI's (tests/test_fuzz.py), with random inputs.

Alternates rounds of (a) image bytes into server.imaging.decode and the preprocessing after it and
(b) random ExplainRequest messages to a real server on loopback, both from the hypothesis strategies
in tests/fuzz_inputs.py, until ``--seconds`` pass. Counts every outcome; an input answered INTERNAL,
UNKNOWN or UNAVAILABLE, answered OK with NaN or infinite numbers, or a decoding exception other than the
server's refusal, is a failure, saved (base64)
in the results. The model is TinyNet (tests/tiny_models.py, 10 classes, 32x32), exported once into
bench/.cache/fuzz (needs torch), so that a run spends its time on inputs, not on inference.

    python bench/fuzz.py --seconds 120     # writes bench/results/fuzz.json
"""

from __future__ import annotations

import argparse
import base64
import collections
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from common import write_json  # noqa: E402
from fuzz_inputs import explain_requests, image_bytes, non_finite_fields  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from onnxcam.client import ExplainerClient  # noqa: E402
from onnxcam.proto import explainer_pb2 as pb  # noqa: E402
from server import imaging  # noqa: E402
from server.app import ExplainerServer  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.errors import RequestError  # noqa: E402
from server.model_info import Preprocess  # noqa: E402
from server.repository import load_repository  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "fuzz"
INPUT = (32, 32)
NUM_CLASSES = 10
MAX_PIXELS = 4_000_000
FAILURES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS}
ROUND = dict(deadline=None, database=None, phases=[Phase.generate],
             suppress_health_check=list(HealthCheck))
#: Failing inputs kept in the results (the counts cover all of them).
KEEP_FAILURES = 20


def tiny_model() -> Path:
    """bench/.cache/fuzz/tiny, exported on first use."""
    folder = CACHE / "tiny"
    if not (folder / "model.json").exists():
        from tiny_models import TinyNet, seeded

        from exporter import export

        print("exporting TinyNet for the fuzz run (once)...", flush=True)
        export(seeded(TinyNet()), None, folder, input_size=INPUT, labels=[f"thing {i}" for i in range(NUM_CLASSES)])
    return folder.parent


class Tally:
    def __init__(self) -> None:
        self.decode: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        self.failures: list[dict] = []

    def fail(self, kind: str, what: str, data: bytes) -> None:
        if len(self.failures) < KEEP_FAILURES:
            self.failures.append({"kind": kind, "what": what, "input_base64": base64.b64encode(data).decode()})
        print(f"FAILURE ({kind}): {what}", flush=True)


def decode_round(tally: Tally, examples: int, preprocess: Preprocess) -> None:
    @settings(max_examples=examples, **ROUND)
    @given(data=image_bytes)
    def one(data: bytes) -> None:
        try:
            image = imaging.decode(data, MAX_PIXELS)
            imaging.prepare_image(image, preprocess)
            tally.decode["decoded"] += 1
        except RequestError as error:
            tally.decode[error.code.name] += 1
        except Exception as error:  # noqa: BLE001 - exactly what the fuzz run looks for
            tally.decode["EXCEPTION"] += 1
            tally.fail("decode", f"{type(error).__name__}: {error}", data)

    one()


def request_round(tally: Tally, client: ExplainerClient, examples: int) -> None:
    @settings(max_examples=examples, **ROUND)
    @given(request=explain_requests("tiny", *INPUT, num_classes=NUM_CLASSES))
    def one(request: pb.ExplainRequest) -> None:
        try:
            response = client.explain_request(request)
            tally.requests["OK"] += 1
            if non_finite_fields(response):
                tally.requests["OK_NOT_FINITE"] += 1
                tally.fail("request", f"OK with {non_finite_fields(response)}", request.SerializeToString())
        except grpc.RpcError as error:
            tally.requests[error.code().name] += 1
            if error.code() in FAILURES:
                tally.fail("request", f"{error.code().name}: {error.details()}", request.SerializeToString())

    one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to run (default 120)")
    parser.add_argument("--out", default="fuzz", help="results name under bench/results (default fuzz)")
    args = parser.parse_args()

    config = ServerConfig(host="127.0.0.1", port=0, intra_op_threads=1, inter_op_threads=1,
                          max_image_pixels=MAX_PIXELS, grace_s=5.0)
    server = ExplainerServer(load_repository(tiny_model(), config), config).start()
    preprocess = server.repository.get("tiny").info.preprocess
    tally = Tally()
    start = time.monotonic()
    try:
        with ExplainerClient(server.address, timeout=60) as client:
            while time.monotonic() - start < args.seconds:
                decode_round(tally, 300, preprocess)
                request_round(tally, client, 100)
                print(f"{time.monotonic() - start:6.0f} s: decode {dict(tally.decode)}; requests "
                      f"{dict(tally.requests)}", flush=True)
            serving = client.health()
    finally:
        server.stop(0)
    seconds = time.monotonic() - start
    payload = {"seconds": round(seconds, 1), "images_tried": sum(tally.decode.values()),
               "requests_tried": sum(tally.requests.values()), "decode_outcomes": dict(tally.decode),
               "request_statuses": dict(tally.requests),
               "failures": (tally.decode["EXCEPTION"] + tally.requests["OK_NOT_FINITE"]
                            + sum(tally.requests[code.name] for code in FAILURES)),
               "failure_examples": tally.failures, "health_after": serving}
    path = write_json(args.out, payload)
    print(f"{payload['images_tried']} images and {payload['requests_tried']} requests in {seconds:.0f} s; "
          f"{payload['failures']} failures; health after: {serving}; {path}")
    if payload["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
