"""Reference implementations of the evaluation measures, for tests and bench/evaluate.py (needs torch).

- ``RiseCausalMetric``: the RISE authors' deletion/insertion (Petsiuk et al. 2018,
  github.com/eclique/RISE, evaluation.py, MIT licence), ported line for line with three changes: the
  image area is the input's (their ``HW`` is the constant 224 * 224), it runs on the CPU, and the
  plotting is left out. Their model is ``nn.Sequential(model, nn.Softmax(dim=1))``: probabilities.
- ``rise_gkern`` / ``rise_blur``: their insertion substrate, ``gkern(11, 5)`` and
  ``conv2d(x, kern, padding=klen // 2)`` (from their notebooks).
- pytorch-grad-cam's ``DropInConfidence`` / ``IncreaseInConfidence`` and Quantus's ``PixelFlipping``,
  ``PointingGame`` and ``RelevanceMassAccuracy`` are used as they are; the helpers here only call them.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn


def rise_gkern(klen: int = 11, nsig: float = 5) -> torch.Tensor:
    """The authors' ``gkern``: a Gaussian-smoothed delta on klen x klen, one per colour channel."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    kern[0, 0] = k
    kern[1, 1] = k
    kern[2, 2] = k
    return torch.from_numpy(kern.astype("float32"))


def rise_blur(x: torch.Tensor, klen: int = 11, nsig: float = 5) -> torch.Tensor:
    return nn.functional.conv2d(x, rise_gkern(klen, nsig), padding=klen // 2)


def rise_auc(arr: np.ndarray) -> float:
    """The authors' ``auc``: normalised area under the curve."""
    return float((arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1))


class RiseCausalMetric:
    """The authors' ``CausalMetric.single_run`` (mode 'del' or 'ins', ``step`` pixels per iteration)."""

    def __init__(self, model: nn.Module, mode: str, step: int, substrate_fn) -> None:
        assert mode in ["del", "ins"]
        self.model = model
        self.mode = mode
        self.step = step
        self.substrate_fn = substrate_fn

    @torch.no_grad()
    def single_run(self, img_tensor: torch.Tensor, explanation: np.ndarray) -> np.ndarray:
        hw = img_tensor.shape[2] * img_tensor.shape[3]
        pred = self.model(img_tensor)
        top, c = torch.max(pred, 1)
        c = c.cpu().numpy()[0]
        n_steps = (hw + self.step - 1) // self.step
        if self.mode == "del":
            start = img_tensor.clone()
            finish = self.substrate_fn(img_tensor)
        else:
            start = self.substrate_fn(img_tensor)
            finish = img_tensor.clone()
        scores = np.empty(n_steps + 1)
        salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
        for i in range(n_steps + 1):
            pred = self.model(start)
            scores[i] = pred[0, c]
            if i < n_steps:
                coords = salient_order[:, self.step * i:self.step * (i + 1)]
                start.cpu().numpy().reshape(1, 3, hw)[0, :, coords] = finish.cpu().numpy().reshape(1, 3, hw)[0, :,
                                                                                                             coords]
        return scores


def softmax_model(model: nn.Module) -> nn.Module:
    """RISE's evaluation model: the classifier followed by a softmax."""
    return nn.Sequential(model, nn.Softmax(dim=1)).eval()


def torch_scores(model: nn.Module, target: int):
    """A metrics.ScoreFn over a torch classifier: [N, 3, H, W] -> the target's softmax probability."""

    @torch.no_grad()
    def score(rows: np.ndarray) -> np.ndarray:
        return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(rows))), dim=1)[:, target].double().numpy()

    return score
