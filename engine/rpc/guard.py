"""Server interceptor: malformed protobuf -> INVALID_ARGUMENT, GroveError -> its status, any other error -> INTERNAL."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from engine.errors import GroveError, InvalidArgument
from engine.rpc import status

_log = logging.getLogger("grove.rpc")
_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def rebuild(handler: grpc.RpcMethodHandler, call: Callable, stream: Callable, *, deserializer) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` running ``call`` (unary response) or ``stream`` (streamed); its
    answers may also be bytes already serialised (``passing_bytes``)."""
    kind = (handler.request_streaming, handler.response_streaming)
    behaviour = stream if handler.response_streaming else call
    serializer = passing_bytes(handler.response_serializer)
    return _MAKERS[kind](behaviour, request_deserializer=deserializer, response_serializer=serializer)


def passing_bytes(serialize: Callable | None) -> Callable | None:
    """``serialize``, except that bytes go out as they are: a handler with a large answer serialises it itself,
    so that the message is freed before gRPC copies the bytes (a peak of 2x the answer, not 3x)."""
    if serialize is None or getattr(serialize, "passes_bytes", False):
        return serialize

    def serialize_or_pass(response: object) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    serialize_or_pass.passes_bytes = True  # type: ignore[attr-defined]
    return serialize_or_pass


def behaviour_of(handler: grpc.RpcMethodHandler) -> Callable:
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def _fail(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    """End the call with the status of ``exc`` (``context.abort`` raises); the server keeps serving."""
    if isinstance(exc, grpc.RpcError) or context.code() not in (None, grpc.StatusCode.OK):
        raise exc  # the client went away mid-stream, or the handler aborted with its own status already
    if isinstance(exc, GroveError):
        context.abort(status.to_status(exc), str(exc))
    _log.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}) in {method}; see the server log")


class GuardInterceptor(grpc.ServerInterceptor):
    """Deserialises requests itself (so a bad message is the caller's error) and maps every failure to a status."""

    def __init__(self, prefix: str = "/grove.") -> None:
        self._prefix = prefix

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix) or handler.request_deserializer is None:
            return handler
        inner, deserialize = behaviour_of(handler), handler.request_deserializer

        def parse(raw: bytes) -> object:
            try:
                return deserialize(raw)
            except Exception as exc:  # noqa: BLE001 - any decode failure is the caller's malformed message
                raise InvalidArgument(f"the request to {method} is not a valid protobuf message ({exc})") from None

        def parse_in(arg):
            return (parse(raw) for raw in arg) if handler.request_streaming else parse(arg)

        def call(arg, context):
            try:
                return inner(parse_in(arg), context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status by _fail
                _fail(context, exc, method)

        def stream(arg, context):
            try:
                yield from inner(parse_in(arg), context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status by _fail
                _fail(context, exc, method)

        return rebuild(handler, call, stream, deserializer=None)
