"""Errors that reach API clients, each mapped to an OpenAI-style body.

GatewayError
├── InvalidRequestError       400 invalid_request_error
├── AuthenticationError       401 authentication_error
├── InsufficientCreditsError  402 insufficient_credits
├── PermissionDeniedError     403 permission_error
├── NotFoundError             404 not_found_error
├── PayloadTooLargeError      413 invalid_request_error
├── RateLimitError            429 rate_limit_error
└── UpstreamError             502 upstream_error (status may be the upstream's)
    └── UpstreamTimeoutError  504 timeout_error
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}
        # The verified key the error concerns, when there is one (for example
        # a revoked key), so the rejected call can be recorded against it.
        self.identity: object | None = None

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"


class InsufficientCreditsError(GatewayError):
    status_code = 402
    error_type = "insufficient_credits"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "not_found_error"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"


class ClientClosedRequestError(GatewayError):
    """The client went away before the gateway could respond (nginx's 499)."""

    status_code = 499
    error_type = "client_disconnected"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"


class ServiceUnavailableError(GatewayError):
    status_code = 503
    error_type = "service_unavailable"


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        error_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        # Seconds the upstream requested to wait before a retry (Retry-After), if given.
        self.retry_after = retry_after
        if error_type is not None:
            self.error_type = error_type


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    error_type = "timeout_error"
