"""Server reflection over two descriptor pools: protobuf's default one (onnxcam.v1, health,
reflection) and the Open Inference Protocol stubs' own (onnxcam.proto.inference_pool), so that
grpcurl and other reflection clients see every service this server answers."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection

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


def enable(service_names: Sequence[str], server: grpc.Server) -> None:
    pool = ChainedPool([descriptor_pool.Default(), inference_pool.POOL])
    reflection.enable_server_reflection(tuple(service_names), server, pool=pool)
