"""Method enum values <-> method names (``gradcam``, ``cam``, ...), both from the registry."""

from __future__ import annotations

from collections.abc import Iterable

from onnxcam import methods as registry
from onnxcam.proto import explainer_pb2 as pb
from server.errors import invalid

NAME_BY_ENUM: dict[int, str] = {pb.Method.Value(m.enum): m.name for m in registry.METHODS}
ENUM_BY_NAME: dict[str, int] = {name: value for value, name in NAME_BY_ENUM.items()}


def requested(values: Iterable[int]) -> list[str]:
    """The request's methods as names, deduplicated in order; [] means predictions only."""
    values = list(values)
    if not values:
        return list(registry.DEFAULT)
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
