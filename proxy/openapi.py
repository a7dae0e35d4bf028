"""OpenAPI 3.1 description of the proxy's /v1 routes, served at GET /openapi.json.

Request schemas state the checks `proxy.routes` applies before a call is
forwarded (required fields, types and numeric ranges). Fields the proxy
passes through unchecked are allowed by `additionalProperties`. Response
schemas describe the OpenAI-style error body exactly and the successful
bodies only loosely, because they come from the provider. The admin API
describes itself at /admin/openapi.json.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.responses import JSONResponse

JSON = "application/json"
ANY_OBJECT: dict[str, Any] = {"type": "object"}

MODEL_ID = {"type": "string", "minLength": 1, "maxLength": 200}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {
            "type": "string",
            "enum": ["system", "developer", "user", "assistant", "tool", "function"],
        },
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "null"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"type": "string"}},
                    },
                },
            ]
        },
    },
}
OUTPUT_LIMIT = {"type": "integer", "minimum": 1, "maximum": 10_000_000}
COMMON_FIELDS: dict[str, Any] = {
    "model": MODEL_ID,
    "stream": {"type": "boolean"},
    "models": {"type": "array", "maxItems": 10, "items": MODEL_ID},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "max_tokens": OUTPUT_LIMIT,
    "max_completion_tokens": OUTPUT_LIMIT,
    "max_output_tokens": OUTPUT_LIMIT,
    "n": {"type": "integer", "minimum": 1, "maximum": 128},
    "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
ERROR_STATUSES = {
    "400": "invalid request: malformed JSON, a missing or invalid field",
    "401": "missing, unknown or revoked API key",
    "402": "a budget or credit balance has not enough left",
    "403": "the key may not use this model, endpoint, address or referrer",
    "404": "unknown model, route or resource",
    "408": "the request head or body was not received in time",
    "413": "request body larger than GATEWAYZ_MAX_BODY_BYTES",
    "429": "a rate limit or the provider rejected the call for its rate",
    "431": "request line and headers larger than GATEWAYZ_MAX_HEADER_BYTES",
    "499": "the client disconnected before the call ended",
    "502": "the provider failed or returned an invalid response",
    "503": "no provider available, or the usage recorder is full",
    "504": "the provider timed out",
}
# One event of a `stream: true` response; `data` is a JSON chunk or `[DONE]`.
SERVER_SENT_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
}
LIST = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
}
MODEL = {
    "type": "object",
    "required": ["id", "object", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}


def errors(schema: dict[str, Any] = ERROR) -> dict[str, Any]:
    return {
        status: {"description": text, "content": {JSON: {"schema": schema}}}
        for status, text in ERROR_STATUSES.items()
    }


def ok(schema: dict[str, Any], description: str, stream: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {JSON: {"schema": schema}}
    if stream:
        content["text/event-stream"] = {"schema": SERVER_SENT_EVENT}
    return {"200": {"description": description, "content": content}}


def call(
    summary: str,
    required: list[str],
    fields: dict[str, Any],
    example: dict[str, Any],
    stream: bool = True,
    error_schema: dict[str, Any] = ERROR,
) -> dict[str, Any]:
    """Describe a POST call endpoint whose JSON body has `fields` besides the common ones."""
    body = {
        "type": "object",
        "required": ["model", *required],
        "properties": {**COMMON_FIELDS, **fields},
        "additionalProperties": True,
        "examples": [example],
    }
    description = "the provider's response, or server-sent events with `stream: true`"
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
            "responses": {**ok(ANY_OBJECT, description, stream), **errors(error_schema)},
        }
    }


def read(summary: str, schema: dict[str, Any], parameters: list[Any] | None = None) -> Any:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {**ok(schema, summary), **errors()},
    }
    if parameters:
        operation["parameters"] = parameters
    return operation


def path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def query_parameter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


PAGE = [
    query_parameter("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
    query_parameter("after", {"type": "string", "maxLength": 100}),
]
SESSION_BODY = {"type": "object", "additionalProperties": True}
TEMPLATE_BODY = {
    "type": "object",
    "required": ["name", "content"],
    "properties": {
        "name": {"type": "string"},
        "content": {"type": "string"},
        "description": {"type": "string"},
    },
    "additionalProperties": False,
}


def resource_write(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {JSON: {"schema": schema}}},
        "responses": {**ok(ANY_OBJECT, summary), **errors()},
    }


def build_document() -> dict[str, Any]:
    messages_fields = {"messages": {"type": "array", "minItems": 1, "items": MESSAGE}}
    # sandbox/echo serves every key without a provider, so the examples get a 200.
    chat_example = {"model": "sandbox/echo", "messages": [{"role": "user", "content": "hi"}]}
    paths = {
        "/v1/chat/completions": call(
            "Create a chat completion", ["messages"], messages_fields, chat_example
        ),
        "/v1/completions": call(
            "Create a text completion",
            ["prompt"],
            {"prompt": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
            {"model": "sandbox/echo", "prompt": "hi"},
        ),
        "/v1/embeddings": call(
            "Create embeddings",
            ["input"],
            {
                "input": {
                    "anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1}]
                },
                "stream": {"const": False},
            },
            {"model": "sandbox/echo", "input": "hi"},
            stream=False,
        ),
        "/v1/images/generations": call(
            "Generate images",
            ["prompt"],
            {"prompt": {"type": "string", "minLength": 1}, "stream": {"const": False}},
            {"model": "sandbox/echo", "prompt": "a cat"},
            stream=False,
        ),
        "/v1/responses": call(
            "Create a response",
            ["input"],
            {"input": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
            {"model": "sandbox/echo", "input": "hi"},
        ),
        "/v1/messages": call(
            "Create an Anthropic message",
            ["messages", "max_tokens"],
            {**messages_fields, "max_tokens": OUTPUT_LIMIT},
            {**chat_example, "max_tokens": 16},
            error_schema=ANTHROPIC_ERROR,
        ),
        "/v1/models": {"get": read("List the models this key can call", LIST)},
        "/v1/models/{model_id}": {
            "get": read(
                "Retrieve one model",
                MODEL,
                [{**path_parameter("model_id"), "example": "sandbox/echo"}],
            )
        },
        "/v1/key": {"get": read("Show this key's limits and spend", ANY_OBJECT)},
        "/v1/sessions": {
            "post": resource_write("Create a chat session", SESSION_BODY),
            "get": read(
                "List chat sessions",
                LIST,
                [*PAGE, query_parameter("q", {"type": "string", "maxLength": 200})],
            ),
        },
        "/v1/sessions/{session_id}": {
            "get": read("Retrieve a chat session", ANY_OBJECT, [path_parameter("session_id")]),
            "patch": {
                **resource_write("Update a chat session", SESSION_BODY),
                "parameters": [path_parameter("session_id")],
            },
            "delete": read("Delete a chat session", ANY_OBJECT, [path_parameter("session_id")]),
        },
        "/v1/sessions/{session_id}/messages": {
            "get": read(
                "List a session's messages",
                LIST,
                [
                    path_parameter("session_id"),
                    query_parameter("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    query_parameter("after", {"type": "integer", "minimum": 0}),
                ],
            )
        },
        "/v1/templates": {
            "post": resource_write("Create a prompt template version", TEMPLATE_BODY),
            "get": read("List prompt templates", LIST, PAGE),
        },
        "/v1/templates/{name}": {
            "get": read(
                "Retrieve a prompt template",
                ANY_OBJECT,
                [
                    path_parameter("name"),
                    query_parameter("version", {"type": "integer", "minimum": 1}),
                ],
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Gatewayz API",
            "version": "1",
            "description": "OpenAI-compatible calls through the Gatewayz proxy.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            }
        },
        "security": [{"bearer": []}, {"x-api-key": []}],
        "paths": paths,
    }


DOCUMENT = build_document()


async def openapi_document(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
