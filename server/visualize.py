"""The VisualizeClass RPC: class model visualisation through the model's input_gradients.onnx batcher.

The ascent itself is onnxcam.class_model's (shared with ``onnxcam visualize-class --model-dir``);
here each step's row goes through the batcher like any request's row, and the deadline and the
caller's presence are checked before every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from onnxcam import class_model, contract
from onnxcam.proto import explainer_pb2 as pb
from server import deadlines, heatmaps
from server.batcher import BatchResult
from server.errors import cancelled, deadline, failed_precondition, invalid
from server.repository import Repository


def options(request: pb.VisualizeClassRequest, height: int, width: int) -> class_model.Options:
    try:
        return class_model.Options(
            steps=request.steps, learning_rate=request.learning_rate, l2=request.l2, jitter=request.jitter,
            blur_sigma=request.blur_sigma, blur_every=request.blur_every,
            seed=request.seed if request.HasField("seed") else 0, report_every=request.report_every,
        ).resolved(height, width)
    except ValueError as error:
        raise invalid(str(error)) from None


def visualize_class(repository: Repository, request: pb.VisualizeClassRequest, deadline_at: float | None,
                    wait: Callable[[object, float | None], BatchResult],
                    is_active: Callable[[], bool]) -> Iterator[pb.VisualizeClassUpdate]:
    """Progress updates, then the image; RequestError for what the caller got wrong."""
    model = repository.get(request.model)
    info = model.info
    if model.input_batcher is None:
        raise failed_precondition(f"model {model.name} has no {contract.INPUT_GRADIENTS_FILE} (exported before it "
                                  "existed, or with --no-input-gradients): re-export it to visualise classes")
    if not 0 <= request.target < info.num_classes:
        raise invalid(f"class index {request.target} is out of range: model {model.name} has classes "
                      f"0..{info.num_classes - 1}")
    height, width = info.input_size
    used = options(request, height, width)

    def gradient(image: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
        feed = {contract.INPUT_PIXELS: image, contract.INPUT_TARGET: np.array([target], np.int64),
                contract.INPUT_RULE: np.array([contract.RULE_PLAIN], np.int64)}
        outputs = wait(model.input_batcher.submit(feed, deadline_at), deadline_at).outputs
        return outputs[contract.OUTPUT_LOGITS], outputs[contract.OUTPUT_INPUT_GRADIENTS]

    def check() -> None:
        if deadlines.passed(deadline_at):
            raise deadline("the deadline passed during the class visualisation")
        if not is_active():
            raise cancelled("the caller went away")

    for progress, image in class_model.ascend(gradient, (3, height, width), request.target, used, check=check):
        update = pb.VisualizeClassUpdate(step=progress.step, steps=progress.steps, score=progress.score,
                                         objective=progress.objective, probability=progress.probability)
        if image is not None:
            pre = info.preprocess
            update.image_png = heatmaps.encode_png(class_model.to_rgb(image, pre.mean, pre.std, pre.scale))
            update.top1, update.top1_label = progress.top1, info.labels[progress.top1]
        yield update
