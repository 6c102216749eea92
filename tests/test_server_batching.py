"""Dynamic batching, the queue limit and deadlines, on a server whose batches only close when full
(or when drained): what is batched together is decided by the test, never by timing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from test_server_helpers import running_server, wait_until

from onnxcam.client import ExplainerClient
from onnxcam.proto import explainer_pb2 as pb

NEVER_MS = 600_000.0  # a batch waits this long for more rows: in practice until it is full or drained


@pytest.fixture
def stalled(tiny_model_dir):
    with running_server(tiny_model_dir, max_batch=4, max_delay_ms=NEVER_MS, max_queue=3) as server:
        with ExplainerClient(server.address, timeout=60, retry=False) as client:
            yield server, client
        model = server.repository.get("tiny")
        model.explain_batcher.drain()
        model.predict_batcher.drain()


def tensors(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(42)
    return [rng.standard_normal((3, 32, 32)).astype(np.float32) for _ in range(n)]


def test_concurrent_requests_share_a_batch_and_match_unbatched_runs(tiny_model_dir):
    session = ort.InferenceSession(str(tiny_model_dir / "explainer.onnx"), providers=["CPUExecutionProvider"])
    inputs = tensors(4)
    targets = [[], [3], [], [9]]
    with running_server(tiny_model_dir, max_batch=4, max_delay_ms=NEVER_MS) as server, \
            ExplainerClient(server.address, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.explain, x, "tiny", methods=["gradcam", "xgradcam"], targets=t, raw=True)
                   for x, t in zip(inputs, targets, strict=True)]
        responses = [f.result() for f in futures]
        batcher = server.repository.get("tiny").explain_batcher
        assert (batcher.batches, batcher.rows_run) == (1, 4)
    for x, t, response in zip(inputs, targets, responses, strict=True):
        assert response.timing.batch_rows == 4
        logits, *maps = session.run(["logits", "cam_gradcam", "cam_xgradcam"],
                                    {"pixels": x[None], "target": np.asarray(t or [-1], np.int64)})
        assert [p.index for p in response.predictions] == np.argsort(-logits[0])[:5].tolist()
        np.testing.assert_allclose([p.logit for p in response.predictions], np.sort(logits[0])[::-1][:5],
                                   rtol=1e-5, atol=1e-5)
        for heatmap, expected in zip(response.heatmaps, maps, strict=True):
            assert heatmap.target == (t[0] if t else int(np.argmax(logits[0])))
            got = np.asarray(heatmap.raw.values, np.float32).reshape(8, 8)
            np.testing.assert_allclose(got, expected[0], rtol=1e-5, atol=1e-6)


def test_full_queue_is_resource_exhausted(stalled):
    server, client = stalled
    batcher = server.repository.get("tiny").explain_batcher
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.explain, tensors(1)[0], "tiny", targets=[0, 1, 2])  # 3 rows: the queue is full
        wait_until(lambda: batcher.queued_rows == 3, "the first request to be queued")
        with pytest.raises(grpc.RpcError) as error:
            client.explain(tensors(1)[0], "tiny")
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in error.value.details()
        batcher.drain()  # what shutdown does: run the queue now
        assert [h.target for h in first.result().heatmaps] == [0, 1, 2]
    assert client.explain(tensors(1)[0], "tiny").predictions  # and it keeps serving


def test_deadline_passed_in_the_queue(stalled):
    server, client = stalled
    batcher = server.repository.get("tiny").explain_batcher
    with pytest.raises(grpc.RpcError) as error:
        client.explain(tensors(1)[0], "tiny", timeout=0.5)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The abandoned row leaves the queue instead of being computed for nobody.
    wait_until(lambda: batcher.queued_rows == 0, "the expired row to leave the queue")
    assert batcher.rows_dropped == 1 and batcher.rows_run == 0
    batcher.drain()
    assert client.explain(tensors(1)[0], "tiny", methods=[pb.GRADCAM]).heatmaps
