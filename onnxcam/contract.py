"""Names shared by the exporter and the server: the explainer graph contract of docs/DESIGN.md.

Kept free of torch so that the server can import it.
"""

from __future__ import annotations

EXPLAINER_FILE = "explainer.onnx"
HEAD_FILE = "head.onnx"
#: The plain network, pixels -> logits: Score-CAM's masked forwards and the overhead baseline.
FORWARD_FILE = "forward.onnx"
#: The whole network's backward pass to the pixels, one ReLU rule per row: saliency, deconvnet,
#: guided backpropagation and Guided Grad-CAM. A graph of its own, so the explainer's cost never grows.
INPUT_GRADIENTS_FILE = "input_gradients.onnx"
MODEL_JSON = "model.json"
#: A bundled model's recipe (committed); ``onnxcam models build`` exports the folder's graphs from it.
RECIPE_FILE = "recipe.json"
#: Weight [C, K] and bias [C] of the head when it is global-average-pool + linear (CAM and the
#: closed form of Ablation-CAM need them; the server has no other way to the weights).
CAM_LINEAR_FILE = "cam_linear.npz"

#: model.json's ``weights`` (and the graphs' ``onnxcam.weights``) for a randomly initialised network:
#: its predictions and heatmaps mean nothing. Other values say where trained weights came from.
WEIGHTS_RANDOM = "random"
#: model.json's ``weights`` when the exporter was not told (the Python API without ``weights=``).
WEIGHTS_UNSPECIFIED = "unspecified"

INPUT_PIXELS = "pixels"
INPUT_TARGET = "target"
INPUT_ACTIVATIONS = "activations"
#: int64 [N]: the ReLU backward rule of each row of input_gradients.onnx.
INPUT_RULE = "rule"
RULE_PLAIN = 0
RULE_DECONVNET = 1
RULE_GUIDED = 2

OUTPUT_LOGITS = "logits"
OUTPUT_ACTIVATIONS = "activations"
OUTPUT_GRADIENTS = "gradients"
#: input_gradients.onnx: d logit[target] / d pixels under the row's rule [N, 3, H, W]; its max over
#: colour channels of the absolute value [N, H, W] (saliency, for plain rows); and that gradient
#: times the row's Grad-CAM map upsampled to the input [N, 3, H, W] (Guided Grad-CAM, guided rows).
OUTPUT_INPUT_GRADIENTS = "input_gradients"
OUTPUT_SALIENCY = "saliency"
OUTPUT_GUIDED_GRADCAM = "guided_gradcam"

#: The methods, their kinds and their graph output names (``cam_<name>``) are in onnxcam.methods.

#: Normalisation epsilon of a map shown to people: (m - min) / (max - min + eps).
DISPLAY_EPS = 1e-7

#: model.json ``source`` entries that name files on the exporting machine: only their base names are
#: written (and served), so a folder never carries (or tells callers) that machine's directories.
SOURCE_FILE_KEYS = ("model_file", "weights")


def file_base_name(value: object) -> object:
    """``/home/me/nets/net.py:build`` -> ``net.py:build`` (either slash); other values unchanged."""
    if not isinstance(value, str):
        return value
    return value.replace("\\", "/").rsplit("/", 1)[-1]


def source_without_paths(source: dict) -> dict:
    """``source`` with SOURCE_FILE_KEYS reduced to base names."""
    return {key: file_base_name(value) if key in SOURCE_FILE_KEYS else value for key, value in source.items()}
