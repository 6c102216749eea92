"""ONNX Runtime sessions: provider choice, thread counts and warm-up, the same for every graph."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger("onnxcam.server")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers(device: str) -> list[str]:
    """CUDA first when this onnxruntime build offers it (and device allows), CPU always last."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ValueError("device cuda asked for, but this onnxruntime build has no CUDAExecutionProvider")
    chosen = [CUDA] if device != "cpu" and CUDA in available else []
    return chosen + [CPU]


def open_session(path: Path, device: str = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, spin: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT's own warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), sess_options=options, providers=providers(device))


def check_io(session: ort.InferenceSession, what: str, inputs: list[str], outputs: list[str]) -> None:
    """Fail at load, not on the first request, when a graph does not have the contract's names."""
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    missing = [f"input {n}" for n in inputs if n not in have_in] + [f"output {n}" for n in outputs
                                                                     if n not in have_out]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")



def check_classes(session: ort.InferenceSession, what: str, num_classes: int) -> None:
    """The graph's logits have model.json's class count: a 10-class graph whose model.json claims
    1000 would otherwise fail in ONNX Runtime, with its node names, on the first target above 9."""
    logits = next(o for o in session.get_outputs() if o.name == "logits")
    classes = logits.shape[-1] if logits.shape else None
    if isinstance(classes, int) and classes != num_classes:
        raise ValueError(f"{what} gives logits for {classes} classes but model.json says num_classes "
                         f"{num_classes} (with as many labels); re-export the folder or fix model.json")
