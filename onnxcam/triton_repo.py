"""A Triton model repository from an exported model folder (``--triton-repo DIR``).

Triton's ONNX Runtime backend (and KServe's Triton runtime) serve each graph as it is, with batching,
scaling and the Open Inference Protocol of their own; the maps are ordinary outputs. Per model folder:

    DIR/<name>/config.pbtxt, 1/model.onnx (explainer.onnx), labels.txt, model.json
    DIR/<name>_head/, <name>_forward/       head.onnx, forward.onnx (Ablation-CAM, ReciproCAM; Score-CAM,
                                            occlusion): the gradient-free methods' graphs
    DIR/<name>_input_gradients/             input_gradients.onnx, when the folder has it

Each config.pbtxt is a ``inference.ModelConfig`` (Triton's schema, the vendored
``onnxcam.proto.model_config_pb2``) in protobuf text format. Triton's dims leave out the batch
dimension (``max_batch_size`` > 0); a graph tensor of shape [N] is declared as dims [1] reshaped to [].
Torch-free: onnx reads the graphs' inputs and outputs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import onnx
from google.protobuf import text_format

from onnxcam import contract
from onnxcam.proto import model_config_pb2 as mc

PLATFORM = "onnxruntime_onnx"
LABELS_FILE = "labels.txt"
#: ONNX element types -> Triton DataType.
DATA_TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64,
              onnx.TensorProto.INT32: mc.TYPE_INT32, onnx.TensorProto.DOUBLE: mc.TYPE_FP64}
#: Graph file -> the suffix of its Triton model's name ("" for the explainer).
GRAPHS = ((contract.EXPLAINER_FILE, ""), (contract.HEAD_FILE, "_head"), (contract.FORWARD_FILE, "_forward"),
          (contract.INPUT_GRADIENTS_FILE, "_input_gradients"))


class TritonRepoError(Exception):
    """A graph that Triton's config cannot describe (an unknown element type, a fixed batch)."""


def _tensors(values: Iterable[onnx.ValueInfoProto], graph: str, labels: str | None, kind: type) -> list:
    """ONNX inputs or outputs -> ModelInput/ModelOutput entries, batch dimension dropped."""
    entries = []
    for value in values:
        tensor = value.type.tensor_type
        if tensor.elem_type not in DATA_TYPES:
            raise TritonRepoError(f"{graph}: {value.name} has ONNX element type {tensor.elem_type}, which this "
                                  "repository writer does not map")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims or dims[0] not in (-1, 0):
            raise TritonRepoError(f"{graph}: {value.name} has no dynamic batch dimension (shape {dims})")
        entry = kind(name=value.name, data_type=DATA_TYPES[tensor.elem_type], dims=dims[1:] or [1])
        if len(dims) == 1:
            entry.reshape.SetInParent()  # [N] in the graph: dims [1] per row, reshaped to a scalar
        if labels and value.name == contract.OUTPUT_LOGITS and kind is mc.ModelOutput:
            entry.label_filename = labels
        entries.append(entry)
    return entries


def model_config(graph: Path, name: str, max_batch_size: int, labels: str | None = None,
                 max_queue_delay_us: int = 0) -> mc.ModelConfig:
    """The ModelConfig of one graph: every input and output with its dims, dynamic batching on."""
    model = onnx.load(str(graph), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    config = mc.ModelConfig(name=name, platform=PLATFORM, max_batch_size=max_batch_size)
    config.input.extend(_tensors([i for i in model.graph.input if i.name not in initializers], graph.name, labels,
                                 mc.ModelInput))
    config.output.extend(_tensors(model.graph.output, graph.name, labels, mc.ModelOutput))
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    return config


def write(model_folder: Path, repo: Path, max_batch_size: int = 8, max_queue_delay_us: int = 0) -> list[Path]:
    """Write the Triton models of one exported model folder into ``repo``; returns their folders."""
    model_folder, repo = Path(model_folder), Path(repo)
    meta = json.loads((model_folder / contract.MODEL_JSON).read_text(encoding="utf-8"))
    base = str(meta.get("name") or model_folder.name)
    written = []
    for file_name, suffix in GRAPHS:
        graph = model_folder / file_name
        if not graph.is_file():
            continue
        name = base + suffix
        folder = repo / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graph, folder / "1" / "model.onnx")
        (folder / LABELS_FILE).write_text("\n".join(meta["labels"]) + "\n", encoding="utf-8")
        shutil.copyfile(model_folder / contract.MODEL_JSON, folder / contract.MODEL_JSON)
        config = model_config(graph, name, max_batch_size, LABELS_FILE, max_queue_delay_us)
        (folder / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
        written.append(folder)
    return written
