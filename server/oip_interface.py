"""What a served model looks like over the Open Inference Protocol: its tensors, names and shapes.

One description drives ModelMetadata, ModelConfig and the checks of ModelInfer, so what a client is
told is what the server accepts and returns. Shapes carry the batch dimension first (-1: any).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxcam import contract
from onnxcam import methods as registry
from onnxcam.methods import Graph, Kind
from server.loaded_model import LoadedModel

INPUT_IMAGE = "image"
INPUT_PIXELS = contract.INPUT_PIXELS
INPUT_TARGET = contract.INPUT_TARGET
OUTPUT_LOGITS = contract.OUTPUT_LOGITS
OUTPUT_TOP_K_INDEX = "top_k_index"
OUTPUT_TOP_K_SCORE = "top_k_score"
MAP_PREFIX = "map_"
HEATMAP_PREFIX = "heatmap_"
OVERLAY_PREFIX = "overlay_"
#: Protocol datatype -> Triton ModelConfig DataType name.
CONFIG_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "BYTES": "TYPE_STRING"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


def map_shape(method: registry.Method, model: LoadedModel) -> tuple[int, ...]:
    """A raw map's shape without the batch: feature resolution [h, w] for the CAM family and the
    gradient-free methods, input resolution ([3,] H, W) for the maps of the pixels' gradient."""
    at_input = method.kind is Kind.INPUT or (method.kind is Kind.SAMPLED and method.runs is not Graph.EXPLAINER)
    size = model.info.input_size if at_input else tuple(model.info.activation_shape[1:])
    return ((method.channels,) if method.channels > 1 else ()) + tuple(size)


def inputs(model: LoadedModel) -> list[TensorSpec]:
    height, width = model.info.input_size
    return [TensorSpec(INPUT_IMAGE, "BYTES", (-1,), optional=True),
            TensorSpec(INPUT_PIXELS, "FP32", (-1, 3, height, width), optional=True),
            TensorSpec(INPUT_TARGET, "INT64", (-1,), optional=True)]


def outputs(model: LoadedModel) -> list[TensorSpec]:
    specs = [TensorSpec(OUTPUT_LOGITS, "FP32", (-1, model.info.num_classes)),
             TensorSpec(OUTPUT_TOP_K_INDEX, "INT64", (-1, -1)),
             TensorSpec(OUTPUT_TOP_K_SCORE, "FP32", (-1, -1))]
    for name in model.methods:
        specs.append(TensorSpec(MAP_PREFIX + name, "FP32", (-1, *map_shape(registry.get(name), model))))
    for prefix in (HEATMAP_PREFIX, OVERLAY_PREFIX):
        specs += [TensorSpec(prefix + name, "BYTES", (-1,)) for name in model.methods]
    return specs


def method_of_output(name: str) -> tuple[str, str] | None:
    """``map_gradcam`` -> (``map_``, ``gradcam``); None for the outputs that are no map."""
    for prefix in (MAP_PREFIX, HEATMAP_PREFIX, OVERLAY_PREFIX):
        if name.startswith(prefix):
            return prefix, name[len(prefix):]
    return None
