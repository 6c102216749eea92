"""The pipeline with its requests counted, timed and logged: every Explain, ExplainStream item and Open
Inference row passes ``Pipeline.explain``, so observing it there covers all of them once."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from onnxcam.proto import explainer_pb2 as pb
from server import request_log
from server.config import ServerConfig
from server.errors import RequestError
from server.metrics import ServerMetrics
from server.pipeline import Pipeline
from server.repository import Repository


class ObservedPipeline(Pipeline):
    """``metrics`` (None: none) and one log line per request when ``log_requests``."""

    def __init__(self, repository: Repository, config: ServerConfig, metrics: ServerMetrics | None,
                 log_requests: bool) -> None:
        super().__init__(repository, config)
        self.metrics = metrics
        self.log_requests = log_requests

    def explain(self, request: pb.ExplainRequest, deadline_at: float | None = None,
                is_active: Callable[[], bool] | None = None) -> pb.ExplainResponse:
        start = time.perf_counter()
        code, response = grpc.StatusCode.OK, None
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            response = super().explain(request, deadline_at, is_active)
            return response
        except RequestError as error:
            code = error.code
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL  # what the service answers for it
            raise
        finally:
            elapsed_s = time.perf_counter() - start
            if self.metrics is not None:
                self.metrics.in_flight.dec()
                self.metrics.request_done(request, code, elapsed_s, response)
            if self.log_requests:
                request_log.log_request(request, code, elapsed_s, response)
