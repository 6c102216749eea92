"""Method enum values <-> the method names of model.json and the graph (``gradcam``, ``cam``, ...)."""

from __future__ import annotations

from collections.abc import Iterable

from onnxcam import contract
from onnxcam.proto import explainer_pb2 as pb
from server.errors import invalid

NAME_BY_ENUM: dict[int, str] = {
    pb.CAM: contract.CAM_METHOD,
    pb.GRADCAM: "gradcam",
    pb.GRADCAMPP: "gradcampp",
    pb.XGRADCAM: "xgradcam",
    pb.LAYERCAM: "layercam",
    pb.HIRESCAM: "hirescam",
    pb.ABLATIONCAM: "ablationcam",
    pb.SCORECAM: "scorecam",
}
ENUM_BY_NAME: dict[str, int] = {name: value for value, name in NAME_BY_ENUM.items()}
GRAPH_METHODS = frozenset(contract.GRADIENT_METHODS) | {contract.CAM_METHOD}
DEFAULT_METHODS = ("gradcam",)

assert set(contract.GRADIENT_METHODS) | {contract.CAM_METHOD} | set(contract.GRADIENT_FREE_METHODS) == set(
    ENUM_BY_NAME), "the proto's Method enum and onnxcam.contract disagree"


def requested(values: Iterable[int]) -> list[str]:
    """The request's methods as names, deduplicated in order; [] means predictions only."""
    values = list(values)
    if not values:
        return list(DEFAULT_METHODS)
    if pb.METHOD_NONE in values:
        if any(v != pb.METHOD_NONE for v in values):
            raise invalid("METHOD_NONE (predictions only) cannot be combined with other methods")
        return []
    names: list[str] = []
    for value in values:
        if value not in NAME_BY_ENUM:
            label = pb.Method.Name(value) if value in pb.Method.values() else str(value)
            raise invalid(f"method {label} is not a valid method")
        name = NAME_BY_ENUM[value]
        if name not in names:
            names.append(name)
    return names
