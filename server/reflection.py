"""Server reflection over three descriptor pools: protobuf's default one (onnxcam.v1, health,
reflection v1alpha), the Open Inference Protocol stubs' own (onnxcam.proto.inference_pool) and one
holding ``grpc.reflection.v1``, so that grpcurl and other reflection clients see every service this
server answers.

Both reflection services are answered: ``grpc.reflection.v1`` (what current grpcurl, Postman and
grpc-java ask first) and ``grpc.reflection.v1alpha`` (older tools). grpcio-reflection ships only
v1alpha; v1 is the same protocol under a new package name (the same messages and field numbers), so
v1's descriptor is v1alpha's renamed and its calls are answered by the same servicer.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from onnxcam.proto import inference_pool


class ChainedPool:
    """The lookups grpc_reflection makes, tried pool by pool; KeyError when none has the name."""

    def __init__(self, pools: Sequence[descriptor_pool.DescriptorPool]) -> None:
        self.pools = list(pools)

    def _first(self, method: str, *args: object) -> object:
        for pool in self.pools:
            try:
                return getattr(pool, method)(*args)
            except KeyError:
                continue
        raise KeyError(args[0] if args else method)

    def FindFileByName(self, name: str) -> object:  # noqa: N802 (the DescriptorPool API)
        return self._first("FindFileByName", name)

    def FindFileContainingSymbol(self, symbol: str) -> object:  # noqa: N802
        return self._first("FindFileContainingSymbol", symbol)

    def FindMessageTypeByName(self, name: str) -> object:  # noqa: N802
        return self._first("FindMessageTypeByName", name)

    def FindExtensionByNumber(self, message: object, number: int) -> object:  # noqa: N802
        return self._first("FindExtensionByNumber", message, number)

    def FindAllExtensions(self, message: object) -> list:  # noqa: N802
        for pool in self.pools:
            if getattr(message, "file", None) is not None and message.file.pool is pool:
                return pool.FindAllExtensions(message)
        return []


V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
V1_PACKAGE = "grpc.reflection.v1"
V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
#: Both reflection services, as enable() registers them (for health checking's and reflection's lists).
SERVICE_NAMES = (V1_SERVICE, V1ALPHA_SERVICE)


def _renamed(type_name: str) -> str:
    old = f".{V1ALPHA_PACKAGE}."
    return f".{V1_PACKAGE}.{type_name[len(old):]}" if type_name.startswith(old) else type_name


def v1_pool() -> descriptor_pool.DescriptorPool:
    """A pool holding ``grpc/reflection/v1/reflection.proto``: v1alpha's file under v1's package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = V1_PACKAGE
    proto.ClearField("options")
    messages = list(proto.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            if field.HasField("type_name"):  # assigning even "" would mark a scalar as a message
                field.type_name = _renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = _renamed(method.input_type), _renamed(method.output_type)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    return pool


def enable(service_names: Sequence[str], server: grpc.Server) -> None:
    """Reflection on ``server`` for ``service_names`` and both reflection services."""
    names = tuple(service_names) + tuple(n for n in SERVICE_NAMES if n not in service_names)
    servicer = reflection.ReflectionServicer(names, pool=ChainedPool([descriptor_pool.Default(), inference_pool.POOL,
                                                                      v1_pool()]))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # v1's messages are v1alpha's on the wire: the same (de)serializers answer both.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))
