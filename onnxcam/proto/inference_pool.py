"""The descriptor pool of the vendored Open Inference Protocol stubs (grpc_service_pb2, model_config_pb2).

Not protobuf's default pool: tritonclient registers the same ``inference.*`` messages there, and a
second, different definition of one name in a pool fails the import. Written by hand, not generated.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
