"""Every explanation method, declared once.

The server (which graph or function computes a method, what it costs, what a model lacks), the
exporter (which maps go into explainer.onnx, and the export check), the client, the demo gallery,
``GetModelMetadata`` and the README's method table are all driven from ``METHODS``. Adding a
method means: an entry here, its formula in its kind's home, and its value in the proto's
``Method`` enum (a test checks the three agree).

Kept free of torch and numpy: the server, the client and the exporter all import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from onnxcam import contract


class Kind(enum.Enum):
    """Where a method is computed, which decides its cost and its formula's home."""

    #: A formula on A and G inside explainer.onnx: ``exporter/cam_formulas.py``, function ``<name>``,
    #: graph output ``cam_<name>`` [N, h, w]. One explainer call yields every such map.
    GRAPH = "explainer.onnx"
    #: A backward pass through the whole network to the pixels, with the method's ReLU rule:
    #: input_gradients.onnx (``exporter/backprop_rules.py``), graph output ``output`` at input resolution.
    #: One row per (image, target, rule); methods that share a rule share the row.
    INPUT = "input_gradients.onnx"
    #: Computed by the server from A (and head.onnx / forward.onnx runs): ``server/gradient_free.py``,
    #: function ``serve_<name>``; its row count is ``forward_count(<name>, K, h, w)``.
    GRADIENT_FREE = "server"
    #: Many rows of one graph per image (noisy copies, a path, occluded copies), reduced to one map:
    #: ``onnxcam/sampling.py``, ``SAMPLERS[<name>]``, numpy only, shared by the server and edge devices.
    #: Its rows are ``sampling.rows_needed(<name>, settings, ...)``, priced per row of ``runs``.
    SAMPLED = "sampled"


class Graph(enum.Enum):
    """The graph whose rows a gradient-free or sampled method runs, for its cost."""

    NONE = "none"
    HEAD = "head.onnx"
    FORWARD = "forward.onnx"
    EXPLAINER = "explainer.onnx"
    INPUT_GRADIENTS = "input_gradients.onnx"


@dataclass(frozen=True)
class Method:
    #: model.json, graph output ``cam_<name>``, CLI and client spelling.
    name: str
    #: The proto's ``onnxcam.v1.Method`` value name.
    enum: str
    title: str
    kind: Kind
    #: Where the method comes from.
    paper: str
    #: The written-out formula (Z = h*w; sums over i, j are spatial, over k channels).
    formula: str
    #: The implementation users compare against, and the tests do.
    reference: str
    #: What the server runs beyond the explainer call (GRADIENT_FREE), or the graph of its rows (SAMPLED).
    runs: Graph = Graph.NONE
    #: Only for models whose head after the target layer is global-average-pool + linear.
    needs_linear_head: bool = False
    #: Ten seconds or more per image on CPU (Score-CAM: a forward per channel): left out of the demo's
    #: default gallery. The sampled methods take seconds at their defaults on the default model; the
    #: demo runs them with fewer rows (onnxcam.demo.DEMO_SAMPLING).
    slow: bool = False
    #: INPUT methods: the ReLU backward rule (contract.RULE_*), the graph output, and its channels.
    rule: int | None = None
    graph_output: str = ""
    channels: int = 1
    #: One plain sentence on what the picture shows, for people reading the demo page.
    shows: str = ""

    @property
    def calls(self) -> str:
        """How many graph calls the method costs, in words: why some take seconds."""
        if self.kind in (Kind.GRAPH, Kind.INPUT):
            return f"one call of {self.kind.value}, shared with the other methods of its graph"
        if self.kind is Kind.GRADIENT_FREE and self.runs is Graph.NONE:
            return "no extra graph call: numpy on the activations of the explainer call"
        per = {"ablationcam": "channel of the target layer", "scorecam": "channel of the target layer",
               "reciprocam": "position of the feature map"}.get(self.name, "row")
        if self.kind is Kind.GRADIENT_FREE:
            return f"not one graph call: one {self.runs.value} run per {per}"
        return f"not one graph call: many rows of {self.runs.value} (samples, path steps or patches)"

    @property
    def output(self) -> str:
        """The graph output that holds the map: ``cam_<name>`` in explainer.onnx, or the INPUT graph's."""
        return self.graph_output or f"cam_{self.name}"


METHODS: tuple[Method, ...] = (
    Method("gradcam", "GRADCAM", "Grad-CAM", Kind.GRAPH, "Selvaraju et al. 2017",
           "α_k = (1/Z) Σ_ij G_kij; ReLU(Σ_k α_k A_k)", "pytorch-grad-cam GradCAM",
           shows="the regions whose features raise the class score (gradient-weighted feature maps)"),
    Method("gradcampp", "GRADCAMPP", "Grad-CAM++", Kind.GRAPH, "Chattopadhay et al. 2018",
           "a = G² / (2G² + Σ_ab A_kab · G³ + 1e-6), 0 where G = 0; w_k = Σ_ij a·ReLU(G); ReLU(Σ_k w_k A_k)",
           "pytorch-grad-cam GradCAMPlusPlus",
           shows="like Grad-CAM, weighting positive gradients more: better for several instances"),
    Method("xgradcam", "XGRADCAM", "XGrad-CAM", Kind.GRAPH, "Fu et al. 2020",
           "w_k = Σ_ij G_kij A_kij / (Σ_ij A_kij + 1e-7); ReLU(Σ_k w_k A_k)", "pytorch-grad-cam XGradCAM",
           shows="like Grad-CAM, each channel weighted by its gradient where it is active"),
    Method("layercam", "LAYERCAM", "LayerCAM", Kind.GRAPH, "Jiang et al. 2021",
           "ReLU(Σ_k ReLU(G_k) ⊙ A_k)", "pytorch-grad-cam LayerCAM",
           shows="the feature maps weighted by their positive gradients position by position: finer"),
    Method("hirescam", "HIRESCAM", "HiResCAM", Kind.GRAPH, "Draelos & Carin 2020",
           "ReLU(Σ_k G_k ⊙ A_k)", "pytorch-grad-cam HiResCAM",
           shows="feature maps times their gradients, position by position (no averaging)"),
    Method("cam", "CAM", "CAM", Kind.GRAPH, "Zhou et al. 2016",
           "w_k = W_ck (the target's FC weight); ReLU(Σ_k w_k A_k)", "the formula on the FC weights (export check)",
           needs_linear_head=True,
           shows="the class's linear weights on the feature maps (CAM; GAP + linear heads only)"),
    Method("gradcam_counterfactual", "GRADCAM_COUNTERFACTUAL", "Counterfactual Grad-CAM", Kind.GRAPH,
           "Selvaraju et al. 2017, §5", "α_k = (1/Z) Σ_ij −G_kij; ReLU(Σ_k α_k A_k)",
           "pytorch-grad-cam GradCAM on the negated score",
           shows="the regions that speak against the class (negated gradients)"),
    Method("saliency", "SALIENCY", "Saliency", Kind.INPUT, "Simonyan et al. 2014",
           "M_ij = max_c |∂S_c/∂I_cij| (the plain gradient)", "Captum Saliency (abs), max over colour channels",
           rule=contract.RULE_PLAIN, graph_output=contract.OUTPUT_SALIENCY,
           shows="how much each pixel's change would move the class score (the plain gradient)"),
    Method("deconvnet", "DECONVNET", "Deconvnet", Kind.INPUT, "Zeiler & Fergus 2014",
           "∂S_c/∂I with every ReLU passing back ReLU(g)", "Captum Deconvolution",
           rule=contract.RULE_DECONVNET, graph_output=contract.OUTPUT_INPUT_GRADIENTS, channels=3,
           shows="the pixel patterns the network's filters respond to, largely regardless of the class"),
    Method("guided_backprop", "GUIDED_BACKPROP", "Guided backpropagation", Kind.INPUT, "Springenberg et al. 2015",
           "∂S_c/∂I with every ReLU passing back ReLU(g)·[x > 0]",
           "Captum GuidedBackprop, pytorch-grad-cam GuidedBackpropReLUModel",
           rule=contract.RULE_GUIDED, graph_output=contract.OUTPUT_INPUT_GRADIENTS, channels=3,
           shows="fine edges and textures that raise the class score, in colour"),
    Method("guided_gradcam", "GUIDED_GRADCAM", "Guided Grad-CAM", Kind.INPUT, "Selvaraju et al. 2017",
           "guided backpropagation ⊙ Grad-CAM upsampled bilinearly to the input",
           "Captum GuidedGradCam (interpolate_mode=bilinear)",
           rule=contract.RULE_GUIDED, graph_output=contract.OUTPUT_GUIDED_GRADCAM, channels=3,
           shows="guided backpropagation kept only where Grad-CAM is hot: fine detail of the class's region"),
    Method("ablationcam", "ABLATIONCAM", "Ablation-CAM", Kind.GRADIENT_FREE, "Desai & Ramaswamy 2020",
           "w_k = (y_c − y_c^(k)) / y_c, y_c^(k) with A_k = 0; ReLU(Σ_k w_k A_k)", "pytorch-grad-cam AblationCAM",
           runs=Graph.HEAD,
           shows="where switching off a feature map channel lowers the class score most"),
    Method("scorecam", "SCORECAM", "Score-CAM", Kind.GRADIENT_FREE, "Wang et al. 2020",
           "M_k = minmax(up(A_k)); w = softmax_k(softmax(f(x ⊙ M_k))_c); ReLU(Σ_k w_k A_k)",
           "pytorch-grad-cam ScoreCAM", runs=Graph.FORWARD, slow=True,
           shows="where showing only that part of the photo keeps the class score high"),
    Method("eigencam", "EIGENCAM", "EigenCAM", Kind.GRADIENT_FREE, "Muhammad & Yeasin 2020",
           "A as [Z, K], centred per channel; its projection on the first right singular vector; ReLU",
           "pytorch-grad-cam EigenCAM",
           shows="the dominant pattern of the activations, whatever the class (class-agnostic)"),
    Method("reciprocam", "RECIPROCAM", "ReciproCAM", Kind.GRADIENT_FREE, "Byun & Lee 2022",
           "map_ij = softmax(head(A masked to a 3×3 Gaussian around (i, j)))_c", "the authors' code (ported)",
           runs=Graph.HEAD,
           shows="where keeping only a small spatial neighbourhood of the features keeps the class score"),
    Method("smoothgrad", "SMOOTHGRAD", "SmoothGrad", Kind.SAMPLED, "Smilkov et al. 2017",
           "max_c (1/n) Σ_i |∂S_c/∂I (I + ε_i)|, ε_i ~ N(0, σ²), σ = level · (max I − min I)",
           "Captum NoiseTunnel(Saliency), same noise", runs=Graph.INPUT_GRADIENTS,
           rule=contract.RULE_PLAIN,
           shows="the saliency averaged over noisy copies of the photo: less speckle"),
    Method("smoothgrad_guided", "SMOOTHGRAD_GUIDED", "SmoothGrad (guided backpropagation)", Kind.SAMPLED,
           "Smilkov et al. 2017", "(1/n) Σ_i guided backpropagation at I + ε_i",
           "Captum NoiseTunnel(GuidedBackprop), same noise", runs=Graph.INPUT_GRADIENTS,
           rule=contract.RULE_GUIDED, channels=3,
           shows="guided backpropagation averaged over noisy copies of the photo"),
    Method("smooth_gradcampp", "SMOOTH_GRADCAMPP", "Smooth Grad-CAM++", Kind.SAMPLED, "Omeiza et al. 2019",
           "D_p = (1/n) Σ_i G(I + ε_i)^p; α = D_2 / (2D_2 + Σ_ab A_kab · D_3 + 1e-6); w_k = Σ_ij α·ReLU(D_1); "
           "ReLU(Σ_k w_k A_k)", "torchcam SmoothGradCAMpp, same noise (differences: README)",
           runs=Graph.EXPLAINER,
           shows="Grad-CAM++ averaged over noisy copies of the photo"),
    Method("integrated_gradients", "INTEGRATED_GRADIENTS", "Integrated Gradients", Kind.SAMPLED,
           "Sundararajan et al. 2017",
           "Σ_c (I − I′) ⊙ Σ_i w_i ∂S_c/∂I (I′ + α_i (I − I′)), Gauss-Legendre (α_i, w_i), I′ black",
           "Captum IntegratedGradients", runs=Graph.INPUT_GRADIENTS, rule=contract.RULE_PLAIN,
           shows="each pixel's share of the class score relative to a black image"),
    Method("occlusion", "OCCLUSION", "Occlusion", Kind.SAMPLED, "Zeiler & Fergus 2014",
           "mean over the patches covering (i, j) of p_c(I) − p_c(I with the patch grey)",
           "Captum Occlusion on the softmax", runs=Graph.FORWARD,
           shows="how much the class probability drops when a grey patch hides each area"),
)

BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}
BY_ENUM: dict[str, Method] = {m.enum: m for m in METHODS}
#: What a request with no methods gets.
DEFAULT: tuple[str, ...] = ("gradcam",)


def of_kind(kind: Kind) -> tuple[Method, ...]:
    return tuple(m for m in METHODS if m.kind is kind)


def names(kind: Kind | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in METHODS if kind is None or m.kind is kind)


def get(name: str) -> Method:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(BY_NAME)}") from None


def markdown_table() -> str:
    """The README's method table."""
    rows = ["| method | request as | computed | formula | paper | reference in the tests |",
            "|---|---|---|---|---|---|"]
    for m in METHODS:
        if m.kind is Kind.SAMPLED:
            where = f"server, rows of {m.runs.value}"
        elif m.kind is Kind.GRADIENT_FREE:
            where = f"server ({m.runs.value})" if m.runs is not Graph.NONE else "server (numpy on A)"
        else:
            where = m.kind.value
        note = " (GAP + linear heads)" if m.needs_linear_head else ""
        formula = m.formula.replace("|", "\\|")  # a table cell cannot hold a bare |
        rows.append(f"| {m.title}{note} | `{m.name}` / `{m.enum}` | {where} | {formula} | {m.paper} | "
                    f"{m.reference} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
