"""Names shared by the exporter and the server: the explainer graph contract of DESIGN.md.

Kept free of torch so that the server can import it.
"""

from __future__ import annotations

EXPLAINER_FILE = "explainer.onnx"
HEAD_FILE = "head.onnx"
#: The plain network, pixels -> logits: Score-CAM's masked forwards and the overhead baseline.
FORWARD_FILE = "forward.onnx"
MODEL_JSON = "model.json"
#: Weight [C, K] and bias [C] of the head when it is global-average-pool + linear (CAM and the
#: closed form of Ablation-CAM need them; the server has no other way to the weights).
CAM_LINEAR_FILE = "cam_linear.npz"

INPUT_PIXELS = "pixels"
INPUT_TARGET = "target"
INPUT_ACTIVATIONS = "activations"

OUTPUT_LOGITS = "logits"
OUTPUT_ACTIVATIONS = "activations"
OUTPUT_GRADIENTS = "gradients"

#: The methods, their kinds and their graph output names (``cam_<name>``) are in onnxcam.methods.

#: Normalisation epsilon of a map shown to people: (m - min) / (max - min + eps).
DISPLAY_EPS = 1e-7
