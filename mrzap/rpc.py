"""gRPC server plumbing shared by the service roles.

`GuardInterceptor` runs one async check before every RPC (of any of the four kinds) and turns a
`MrzapError` raised by the check or by the servicer into the call's status, so servicers raise
domain errors and never build gRPC statuses themselves.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from .errors import MrzapError, to_status

__all__ = ["GuardInterceptor", "bearer_token"]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The token of an `authorization: Bearer <token>` header, or empty."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


class GuardInterceptor(grpc.aio.ServerInterceptor, abc.ABC):
    """Runs `guard` before each RPC and maps project errors to gRPC statuses."""

    @abc.abstractmethod
    async def guard(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Raise a MrzapError to refuse the call; may set context variables for the servicer."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return cast(
            "grpc.RpcMethodHandler[_Request, _Response]",
            self._wrap(handler_call_details.method, handler),
        )

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> object:
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: str, behavior: Any) -> Any:  # noqa: ANN401 - grpc's handler types
        async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: ANN401
            try:
                await self.guard(method, context)
                return await behavior(request, context)
            except MrzapError as error:
                await context.abort(*to_status(error))

        return run

    def _streaming(self, method: str, behavior: Any) -> Any:  # noqa: ANN401 - grpc's handler types
        async def run(
            request: Any,  # noqa: ANN401 - a message, or a request iterator
            context: grpc.aio.ServicerContext[Any, Any],
        ) -> AsyncIterator[Any]:
            try:
                await self.guard(method, context)
                async for response in behavior(request, context):
                    yield response
            except MrzapError as error:
                await context.abort(*to_status(error))

        return run
