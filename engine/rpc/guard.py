"""Server interceptor: malformed protobuf -> INVALID_ARGUMENT, GroveError -> its status, any other error -> INTERNAL;
and the place every call is observed (``engine.rpc.observe``: metrics and the access log), since it sees the
bytes in, the bytes out (it serialises answers itself) and the status of each call."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from engine.errors import GroveError, InvalidArgument
from engine.rpc import status
from engine.rpc.observe import Observer

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


def code_of(exc: BaseException, context: grpc.ServicerContext) -> str:
    """The status code name a failure ends its call with (as ``_fail`` ends it)."""
    if isinstance(exc, GroveError):
        return status.to_status(exc).name
    if isinstance(exc, grpc.RpcError):
        return "CANCELLED"
    code = context.code()
    return code.name if code not in (None, grpc.StatusCode.OK) else "INTERNAL"


def _fail(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    """End the call with the status of ``exc`` (``context.abort`` raises); the server keeps serving."""
    if isinstance(exc, grpc.RpcError) or context.code() not in (None, grpc.StatusCode.OK):
        raise exc  # the client went away mid-stream, or the handler aborted with its own status already
    if isinstance(exc, GroveError):
        context.abort(status.to_status(exc), str(exc))
    _log.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}) in {method}; see the server log")


class GuardInterceptor(grpc.ServerInterceptor):
    """Deserialises requests and serialises answers itself (so a bad message is the caller's error, and both
    sizes are known), maps every failure to a status, and reports each call to ``observer``."""

    def __init__(self, prefix: str = "/grove.", observer: Observer | None = None) -> None:
        self._prefix = prefix
        self._observer = observer or Observer(access_log=False)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix) or handler.request_deserializer is None:
            return handler
        inner, deserialize = behaviour_of(handler), handler.request_deserializer
        serialize = passing_bytes(handler.response_serializer)
        rpc, observer = method.rsplit("/", 1)[-1], self._observer

        def parse(raw: bytes, record) -> object:
            record.bytes_in += len(raw)
            try:
                return deserialize(raw)
            except Exception as exc:  # noqa: BLE001 - any decode failure is the caller's malformed message
                raise InvalidArgument(f"the request to {method} is not a valid protobuf message ({exc})") from None

        def parse_in(arg, record):
            return (parse(raw, record) for raw in arg) if handler.request_streaming else parse(arg, record)

        def emit(response, record) -> bytes:
            out = serialize(response)
            record.bytes_out += len(out)
            return out

        def call(arg, context):
            record, token = observer.begin(rpc)
            code = "OK"
            try:
                return emit(inner(parse_in(arg, record), context), record)
            except Exception as exc:  # noqa: BLE001 - mapped to a status by _fail
                code = code_of(exc, context)
                _fail(context, exc, method)
            finally:
                observer.end(record, token, code)

        def stream(arg, context):
            record, token = observer.begin(rpc)
            code = "OK"
            try:
                for response in inner(parse_in(arg, record), context):
                    yield emit(response, record)
            except Exception as exc:  # noqa: BLE001 - mapped to a status by _fail
                code = code_of(exc, context)
                _fail(context, exc, method)
            except GeneratorExit:
                code = "CANCELLED"
                raise
            finally:
                observer.end(record, token, code)

        return rebuild(handler, call, stream, deserializer=None)
