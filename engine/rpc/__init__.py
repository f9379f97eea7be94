"""Grove's gRPC service: the contract's generated code (``pb``), conversion, status mapping, interceptors, server.

Only ``convert``, ``servicer`` and the SDK's remote backend touch protobuf types; everything else speaks
numpy and ``engine.types``.
"""
