"""The gRPC servicer: status codes on the way out, the pipeline does the work."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc

from onnxcam.proto import explainer_pb2 as pb
from onnxcam.proto import explainer_pb2_grpc as pb_grpc
from server import deadlines, metadata, visualize
from server.errors import RequestError, abort
from server.pipeline import Pipeline

log = logging.getLogger("onnxcam.server")

#: Requests of one ExplainStream being worked on at once; the stream stops reading beyond this.
STREAM_WINDOW = 8


class ExplainerService(pb_grpc.ExplainerServicer):
    def __init__(self, pipeline: Pipeline, stream_workers: int = 4, log_requests: bool = False) -> None:
        self.pipeline = pipeline
        self.log_requests = log_requests
        self._stream_pool = ThreadPoolExecutor(max_workers=stream_workers, thread_name_prefix="stream")

    def _deadline(self, context: grpc.ServicerContext) -> float | None:
        """The caller's deadline and the server's own limit; no deadline at all is common (gRPC's default)."""
        return deadlines.deadline_at(context.time_remaining(), self.pipeline.config.max_request_s)

    def _explain(self, request: pb.ExplainRequest, deadline_at: float | None,
                 is_active: Callable[[], bool] | None = None) -> pb.ExplainResponse:
        """The pipeline, with unexpected failures turned into INTERNAL (the pipeline logs each request)."""
        try:
            return self.pipeline.explain(request, deadline_at, is_active)
        except RequestError:
            raise
        except Exception as error:
            log.exception("request on model %r failed", request.model)
            raise RequestError(grpc.StatusCode.INTERNAL, f"internal error: {error}") from error

    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        if self.log_requests:
            log.info("received explain model=%s", request.model)
        try:
            return self._explain(request, self._deadline(context), context.is_active)
        except RequestError as error:
            abort(context, error)

    def ExplainStream(self, request_iterator: Iterator[pb.ExplainRequest],
                      context: grpc.ServicerContext) -> Iterator[pb.ExplainResponse]:
        """Requests are worked on concurrently (up to STREAM_WINDOW), answered in order."""
        pending: queue.Queue[tuple[pb.ExplainRequest, Future] | None] = queue.Queue(maxsize=STREAM_WINDOW)
        deadline_at = self._deadline(context)

        def _put(entry: tuple[pb.ExplainRequest, Future] | None) -> bool:
            try:
                pending.put(entry, timeout=0.5)
                return True
            except queue.Full:
                return False

        def read() -> None:
            try:
                for request in request_iterator:
                    entry = (request, self._stream_pool.submit(self._explain, request, deadline_at, context.is_active))
                    while not _put(entry):
                        if not context.is_active():
                            return
            except Exception as error:  # the client went away mid-stream
                log.debug("stream reader stopped: %s", error)
            finally:
                while not _put(None) and context.is_active():
                    pass

        threading.Thread(target=read, name="stream-reader", daemon=True).start()
        while (entry := pending.get()) is not None:
            request, future = entry
            try:
                yield future.result()
            except RequestError as error:
                yield pb.ExplainResponse(model=request.model, request_id=request.request_id,
                                         error=pb.Error(code=error.code.value[0], message=error.message))

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        models = self.pipeline.repository.models
        return pb.ListModelsResponse(models=[metadata.summary(models[name]) for name in sorted(models)])

    def GetModelMetadata(self, request: pb.GetModelMetadataRequest, context: grpc.ServicerContext) -> pb.ModelMetadata:
        try:
            return metadata.metadata(self.pipeline.repository.get(request.model))
        except RequestError as error:
            abort(context, error)

    def VisualizeClass(self, request: pb.VisualizeClassRequest,
                       context: grpc.ServicerContext) -> Iterator[pb.VisualizeClassUpdate]:
        try:
            yield from visualize.visualize_class(self.pipeline.repository, request, self._deadline(context),
                                                 self.pipeline.wait, context.is_active)
        except RequestError as error:
            abort(context, error)
        except Exception as error:
            log.exception("VisualizeClass on model %r failed", request.model)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error}")

    def close(self) -> None:
        self._stream_pool.shutdown(wait=True)
