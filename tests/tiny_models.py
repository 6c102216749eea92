"""Small hand-written CNNs: fast to export, and each exercises a different head shape."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyNet(nn.Module):
    """conv stages, then global average pool + linear: CAM applies at ``features``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(3, 8, 2), conv_bn_relu(8, 16, 2), conv_bn_relu(16, 24))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class SkipNet(nn.Module):
    """A skip connection crosses the middle layer: the head also needs the pixels."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8, 2)
        self.middle = conv_bn_relu(8, 8)
        self.last = nn.Conv2d(8, 8, 3, 1, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        out = torch.relu(self.last(self.middle(stem)) + stem)
        return self.fc(out.mean(dim=(2, 3)))


class PoolNet(nn.Module):
    """Average, max and adaptive pooling between the target (``stem``) and the logits."""

    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.body = nn.Sequential(
            nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), conv_bn_relu(8, 8),
            nn.MaxPool2d(2), conv_bn_relu(8, 12), nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(3),
        )
        self.fc = nn.Linear(12 * 9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(self.stem(x)), 1))


class ClippedHeadNet(nn.Module):
    """EfficientNet-Lite's head in small: the target ``features`` ends in ReLU6 and the head applies
    one shared ReLU6 again before GAP + linear. On every real A that is GAP + linear (CAM applies);
    on random activations it is not."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.act = nn.ReLU6()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6(),
                                      nn.Conv2d(8, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.features(x)).mean(dim=(2, 3)))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random but reproducible weights, with non-trivial BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.abs_().add_(0.5)
    return model.eval()


def tiny_vit(seed: int = 0) -> nn.Module:
    """torchvision's VisionTransformer in small: 32 px, 8 px patches (a 4 x 4 grid + the class token), 2 blocks.

    Seeded like the CNNs: torchvision's own init leaves the class head at zero (every map would be zero).
    """
    from exporter.sources import _torchvision

    _torchvision()
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and "ln" not in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
    return model.eval()


def tiny_swin(seed: int = 0) -> nn.Module:
    """torchvision's SwinTransformer in small: 32 px, 4 px patches, one stage of two blocks (the second
    shifted) in 4 x 4 windows.

    ``norm`` outputs [N, 8, 8, 8] channels-last: a cube, which only the LayerNorm over its last dimension
    tells apart from [N, K, h, w] (one stage keeps the trace short: Swin's window code traces slowly).
    """
    from exporter.sources import _torchvision

    _torchvision()
    from torchvision.models.swin_transformer import SwinTransformer

    with torch.random.fork_rng():  # torchvision initialises from the global generator
        torch.manual_seed(seed)
        model = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2], num_heads=[2], window_size=[4, 4],
                                num_classes=5, stochastic_depth_prob=0.0)
    return model.eval()
