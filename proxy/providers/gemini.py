"""Google's Gemini API behind the OpenAI chat format.

A `chat` request becomes a `models/{model}:generateContent` call, or
`models/{model}:streamGenerateContent?alt=sse` for a stream, and an
`embeddings` request a `models/{model}:batchEmbedContents` call, below a
base URL such as https://generativelanguage.googleapis.com/v1beta. The API key
is sent in the `x-goog-api-key` header and never in the URL, so it cannot
end up in access logs or error messages that quote the URL.

Gemini 3 models reject a function calling history whose calls lack the
`thoughtSignature` they were returned with. OpenAI clients only echo the
tool call id, so the signature is carried inside it: `{id}__sig__{signature}`.
"""

from __future__ import annotations

import base64
import logging
import math
import mimetypes
import re
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from gateway_core.errors import GatewayError, InvalidRequestError, UpstreamError
from gateway_core.pricing import parse_gemini_usage
from proxy.providers.base import EventStream, Provider, UpstreamRequest, UpstreamResponse
from proxy.providers.openai_compatible import _HTTPEventStream, transport_error, upstream_error
from proxy.sse import ServerSentEvent
from proxy.tokens import estimate_tokens
from proxy.upstream_http import Response, TransportError, UpstreamClient

logger = logging.getLogger("gatewayz.providers")

_SIGNATURE_MARK = "__sig__"
_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}


class GeminiProvider(Provider):
    endpoints = frozenset({"chat", "embeddings"})

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        client: UpstreamClient,
    ) -> None:
        self.name = name
        self._base_url = base_url.rstrip("/")
        self._client = client
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["x-goog-api-key"] = api_key

    def _url(self, endpoint: str, model: str, method: str) -> str:
        if not self.supports(endpoint):
            raise self.unsupported(endpoint)
        # Quoting keeps a client-chosen model name inside its path segment.
        model_id = quote(model.removeprefix("models/"), safe="")
        return f"{self._base_url}/models/{model_id}:{method}"

    async def send(self, endpoint: str, request: UpstreamRequest) -> UpstreamResponse:
        model = request.upstream_model
        if endpoint == "embeddings":
            url = self._url(endpoint, model, "batchEmbedContents")
            body = await self._post(url, embeddings_to_gemini_request(request.body, model))
            return UpstreamResponse(200, gemini_embeddings_to_openai(body, model, request.body))
        url = self._url(endpoint, model, "generateContent")
        body = await self._post(url, chat_to_gemini_request(request.body))
        return UpstreamResponse(200, gemini_response_to_chat(body, model))

    async def _post(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(
                url, content=orjson.dumps(payload), headers=self._headers
            )
        except TransportError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            raise gemini_error(self.name, response, response.content)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {self.name!r} returned invalid JSON") from exc
        if not isinstance(body, dict):
            raise UpstreamError(f"provider {self.name!r} returned a non-object JSON body")
        return body

    async def open_stream(self, endpoint: str, request: UpstreamRequest) -> EventStream:
        if endpoint == "embeddings":
            raise InvalidRequestError("embeddings cannot be streamed", param="stream")
        content = orjson.dumps(chat_to_gemini_request(request.body))
        try:
            response = await self._client.open(
                self._url(endpoint, request.upstream_model, "streamGenerateContent"),
                params={"alt": "sse"},
                content=content,
                headers=self._headers,
            )
        except TransportError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            try:
                content = await response.aread()
            finally:
                await response.aclose()
            raise gemini_error(self.name, response, content)
        translator = GeminiToChatStream(request.upstream_model)
        stream = _GeminiEventStream(self.name, _HTTPEventStream(self.name, response), translator)
        await stream.start()
        return stream


class _GeminiEventStream(EventStream):
    """Gemini stream responses translated into OpenAI chunks, ending with `[DONE]`."""

    def __init__(
        self, provider: str, upstream: EventStream, translator: GeminiToChatStream
    ) -> None:
        self._provider = provider
        self._upstream = upstream
        self._events: AsyncGenerator[ServerSentEvent, None] = aiter(upstream)  # type: ignore[assignment]
        self._translator = translator
        self._first: dict[str, Any] | None = None

    async def start(self) -> None:
        """Read the first response, so an error sent before any output is raised here."""
        try:
            async for event in self._events:
                if event.data is not None:
                    self._first = self._decode(event)
                    return
        except BaseException:
            # The caller never receives this stream, so it is closed here.
            await self.aclose()
            raise

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        if self._first is not None:
            for chunk in self._translator.feed(self._first):
                yield _chunk_event(chunk)
            self._first = None
        async for event in self._events:
            if event.data is None:
                continue
            for chunk in self._translator.feed(self._decode(event)):
                yield _chunk_event(chunk)
        if not self._translator.done:
            raise UpstreamError(
                f"provider {self._provider!r} closed the stream before a finish reason"
            )
        for chunk in self._translator.finish():
            yield _chunk_event(chunk)
        yield ServerSentEvent(b"data: [DONE]\n\n", None, b"[DONE]")

    def _decode(self, event: ServerSentEvent) -> dict[str, Any]:
        try:
            data = orjson.loads(event.data or b"")
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"provider {self._provider!r} sent an event that is not JSON"
            ) from exc
        if not isinstance(data, dict):
            raise UpstreamError(f"provider {self._provider!r} sent an event that is not an object")
        if isinstance(data.get("error"), dict):
            code = data["error"].get("code")
            status = code if isinstance(code, int) and code >= 400 else 500
            logger.info("provider %r sent a stream error: %s", self._provider, status)
            raise gemini_error(self._provider, Response(status), event.data or b"")
        return data

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            await self._upstream.aclose()


def _chunk_event(chunk: dict[str, Any]) -> ServerSentEvent:
    data = orjson.dumps(chunk)
    return ServerSentEvent(b"data: " + data + b"\n\n", None, data)


def gemini_error(provider: str, response: Response, content: bytes) -> GatewayError:
    """Turn a Gemini error (`{"error": {"code", "message", "status"}}`) into a gateway error.

    Statuses follow `upstream_error`, except 503 (Gemini's "model is
    overloaded"), which stays 503 for the reason given for Anthropic's 529
    in `proxy.providers.anthropic`. The Gemini status name (for example
    RESOURCE_EXHAUSTED) becomes the error code, and the delay of a
    google.rpc.RetryInfo detail becomes `retry_after`.
    """
    error = upstream_error(provider, response, content)
    try:
        payload: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        payload = None
    detail = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(detail, dict):
        if isinstance(detail.get("status"), str) and error.code in (None, "upstream_error"):
            error.code = detail["status"]
        delay = _retry_delay(detail.get("details"))
        if delay is not None and isinstance(error, UpstreamError) and error.retry_after is None:
            error.retry_after = delay
            error.headers["retry-after"] = str(math.ceil(delay))
    if response.status_code == 503:
        error.status_code = 503
    return error


def _retry_delay(details: Any) -> float | None:
    # RetryInfo gives the delay as a protobuf Duration in JSON, e.g. "27s" or "1.5s".
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and re.fullmatch(r"\d+(\.\d+)?s", delay):
            return float(delay.removesuffix("s"))
    return None


# OpenAI chat request -> Gemini GenerateContentRequest.


def chat_to_gemini_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Translate an OpenAI chat request body into a Gemini generateContent body."""
    system, contents = _contents(body.get("messages"))
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": system}]}
    config = _generation_config(body)
    if config:
        request["generationConfig"] = config
    if body.get("tools"):
        declarations = [_declaration(tool, i) for i, tool in enumerate(body["tools"])]
        request["tools"] = [{"functionDeclarations": declarations}]
    if body.get("tool_choice") is not None:
        request["toolConfig"] = {"functionCallingConfig": _calling_config(body["tool_choice"])}
    return request


def _contents(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(messages, list):
        raise InvalidRequestError("messages must be a list", param="messages")
    system_parts: list[str] = []
    contents: list[dict[str, Any]] = []
    # Gemini's functionResponse needs the function name but OpenAI's tool
    # message only has the call id, so names come from earlier assistant calls.
    call_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        role = message.get("role") if isinstance(message, Mapping) else None
        if role in ("system", "developer"):
            system_parts.append(_text(message.get("content")))
        elif role == "user":
            _append(contents, "user", _user_parts(message.get("content"), param))
        elif role == "assistant":
            _append(contents, "model", _model_parts(message, param, call_names))
        elif role == "tool":
            _append(contents, "user", [_function_response(message, param, call_names)])
        else:
            raise InvalidRequestError(
                f"{param}.role {role!r} is not one of system, developer, user, assistant, tool",
                param=f"{param}.role",
            )
    return "\n\n".join(part for part in system_parts if part), contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    # Consecutive turns of one role are merged, because Gemini wants the
    # responses to parallel function calls together in one turn.
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"{param}.content must be a string or a list of content parts",
            param=f"{param}.content",
        )
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            parts.append({"text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            parts.append(_media_part(image.get("url") if isinstance(image, Mapping) else image))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            mime_type = _AUDIO_TYPES.get(audio.get("format"), "audio/wav")
            parts.append({"inlineData": {"mimeType": mime_type, "data": audio.get("data")}})
        elif kind == "file" and isinstance((part.get("file") or {}).get("file_data"), str):
            parts.append(_media_part(part["file"]["file_data"]))
        else:
            raise InvalidRequestError(
                f"{part_param}: content part type {kind!r} cannot be sent to Gemini",
                param=part_param,
            )
    return parts


def _media_part(url: Any) -> dict[str, Any]:
    if isinstance(url, str) and url.startswith("data:"):
        header, _, data = url.partition(",")
        mime_type = header.removeprefix("data:").partition(";")[0]
        return {"inlineData": {"mimeType": mime_type, "data": data}}
    file_data: dict[str, Any] = {"fileUri": url}
    guessed, _ = mimetypes.guess_type(str(url))
    if guessed:
        file_data["mimeType"] = guessed
    return {"fileData": file_data}


def _model_parts(
    message: Mapping[str, Any], param: str, call_names: dict[str, str]
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = _text(message.get("content"))
    if text:
        parts.append({"text": text})
    for j, call in enumerate(message.get("tool_calls") or []):
        call_param = f"{param}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise InvalidRequestError(f"{call_param}.function is missing", param=call_param)
        call_names[str(call.get("id"))] = function.get("name")
        part: dict[str, Any] = {
            "functionCall": {
                "name": function.get("name"),
                "args": _arguments(function.get("arguments"), call_param),
            }
        }
        # NOTE: a call whose id carries no signature (history written by
        # another model or a client that rewrote ids) is sent without one,
        # and Gemini 3 models reject such a history with a 400.
        _, signature = _split_call_id(str(call.get("id")))
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _arguments(arguments: Any, param: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"{param}.function.arguments must be a JSON object encoded as a string",
            param=f"{param}.function.arguments",
        )
    return value


def _function_response(
    message: Mapping[str, Any], param: str, call_names: dict[str, str]
) -> dict[str, Any]:
    call_id = str(message.get("tool_call_id"))
    name = call_names.get(call_id)
    if name is None:
        raise InvalidRequestError(
            f"{param}.tool_call_id {call_id!r} matches no tool call of an earlier "
            "assistant message, so its function name is unknown",
            param=f"{param}.tool_call_id",
        )
    text = _text(message.get("content"))
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    # `response` must be an object: Gemini reads its "output" key as the
    # function's result, or the whole object when that key is absent.
    response = value if isinstance(value, dict) else {"output": value}
    return {"functionResponse": {"name": name, "response": response}}


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    renames = {
        "temperature": "temperature",
        "top_p": "topP",
        "n": "candidateCount",
        "seed": "seed",
        "presence_penalty": "presencePenalty",
        "frequency_penalty": "frequencyPenalty",
    }
    for key, name in renames.items():
        if body.get(key) is not None:
            config[name] = body[key]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is not None:
            config["responseJsonSchema"] = schema
    return config


def _declaration(tool: Any, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
        raise InvalidRequestError(
            f"tools[{index}] must be a function tool", param=f"tools[{index}]"
        )
    declaration: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):
        # parametersJsonSchema takes full JSON Schema; `parameters` only an
        # OpenAPI subset that rejects keys such as additionalProperties.
        declaration["parametersJsonSchema"] = function["parameters"]
    return declaration


def _calling_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    raise InvalidRequestError(
        "tool_choice must be auto, none, required or a function", param="tool_choice"
    )


# Gemini GenerateContentResponse -> OpenAI chat completion.


def gemini_response_to_chat(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Translate a Gemini generateContent response into an OpenAI chat completion."""
    choices = []
    for position, candidate in enumerate(body.get("candidates") or []):
        text, calls = _candidate_output(candidate)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        finish = _finish_reason(candidate.get("finishReason"), bool(calls))
        index = candidate.get("index", position)
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        )
    if not choices:
        # No candidates: Gemini blocked the prompt itself (promptFeedback.blockReason).
        message = {"role": "assistant", "content": "", "refusal": None}
        choices.append(
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "content_filter"}
        )
    return {
        "id": _completion_id(body.get("responseId")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("modelVersion") or model,
        "choices": choices,
        "usage": openai_usage(body.get("usageMetadata")),
    }


def _candidate_output(candidate: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if not isinstance(part, Mapping) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, Mapping):
            function = {
                "name": call.get("name"),
                "arguments": orjson.dumps(call.get("args") or {}).decode(),
            }
            call_id = _join_call_id(call.get("id"), part.get("thoughtSignature"))
            calls.append({"id": call_id, "type": "function", "function": function})
    return "".join(texts), calls


def _join_call_id(gemini_id: Any, signature: Any) -> str:
    call_id = gemini_id if isinstance(gemini_id, str) and gemini_id else _new_id("call_")
    if isinstance(signature, str) and signature:
        return call_id + _SIGNATURE_MARK + signature
    return call_id


def _split_call_id(call_id: str) -> tuple[str, str | None]:
    base, mark, signature = call_id.partition(_SIGNATURE_MARK)
    return base, (signature if mark and signature else None)


def _finish_reason(reason: Any, has_calls: bool) -> str:
    if reason in _FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_calls else "stop"


def openai_usage(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Convert Gemini `usageMetadata` into OpenAI usage fields."""
    usage = parse_gemini_usage(metadata)
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _completion_id(response_id: Any) -> str:
    if isinstance(response_id, str) and response_id:
        return "chatcmpl-" + response_id
    return _new_id("chatcmpl-")


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# OpenAI embeddings <-> Gemini batchEmbedContents.


def embeddings_to_gemini_request(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Translate an OpenAI embeddings request into a Gemini batchEmbedContents body."""
    texts = _embedding_inputs(body.get("input"))
    template: dict[str, Any] = {"model": "models/" + model.removeprefix("models/")}
    if body.get("dimensions") is not None:
        template["outputDimensionality"] = body["dimensions"]
    requests = [{**template, "content": {"parts": [{"text": text}]}} for text in texts]
    return {"requests": requests}


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    raise InvalidRequestError(
        "input must be a string or a non-empty list of strings; Gemini does not take token arrays",
        param="input",
    )


def gemini_embeddings_to_openai(
    body: Mapping[str, Any], model: str, request: Mapping[str, Any]
) -> dict[str, Any]:
    """Translate a Gemini batchEmbedContents response into an OpenAI embeddings response."""
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    for index, embedding in enumerate(body.get("embeddings") or []):
        values = [float(value) for value in embedding.get("values") or []]
        vector: Any = _base64_floats(values) if as_base64 else values
        data.append({"object": "embedding", "index": index, "embedding": vector})
    metadata = body.get("usageMetadata")
    if isinstance(metadata, Mapping):
        tokens = parse_gemini_usage(metadata).prompt_tokens
    else:
        # NOTE: the Gemini API's batchEmbedContents reports no token count
        # (Vertex AI's adds usageMetadata), so the input is priced at the
        # estimate of one token per 4 characters.
        texts = _embedding_inputs(request.get("input"))
        tokens = estimate_tokens(sum(len(text) for text in texts))
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _base64_floats(values: list[float]) -> str:
    # OpenAI's base64 encoding is the vector as little-endian float32.
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


class GeminiToChatStream:
    """Turn Gemini stream responses into OpenAI `chat.completion.chunk` dicts.

    Each streamed response carries new text, whole function calls and
    `usageMetadata` with the counts so far. `finish` returns the usage chunk
    (`choices: []`) built from the last counts. `done` turns true once a
    candidate has a finish reason.
    """

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = _new_id("chatcmpl-")
        self._created = int(time.time())
        self._started = False
        self._usage: Mapping[str, Any] | None = None
        # Candidate index -> number of tool calls streamed so far.
        self._tool_counts: dict[int, int] = {}
        self.done = False

    def feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            if isinstance(data.get("responseId"), str):
                self._id = "chatcmpl-" + data["responseId"]
            chunks.append(self._chunk([_choice(0, {"role": "assistant", "content": ""})]))
        if isinstance(data.get("usageMetadata"), Mapping):
            self._usage = data["usageMetadata"]
        candidates = data.get("candidates") or []
        for position, candidate in enumerate(candidates):
            chunks.extend(self._candidate(candidate.get("index", position), candidate))
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            self.done = True
            chunks.append(self._chunk([_choice(0, {}, "content_filter")]))
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        usage_chunk = self._chunk([])
        usage_chunk["usage"] = openai_usage(self._usage)
        return [usage_chunk]

    def _candidate(self, index: int, candidate: Mapping[str, Any]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        text, calls = _candidate_output(candidate)
        delta: dict[str, Any] = {}
        if text:
            delta["content"] = text
        if calls:
            first = self._tool_counts.get(index, 0)
            delta["tool_calls"] = [{"index": first + k, **call} for k, call in enumerate(calls)]
            self._tool_counts[index] = first + len(calls)
        if delta:
            chunks.append(self._chunk([_choice(index, delta)]))
        reason = candidate.get("finishReason")
        if reason:
            self.done = True
            finish = _finish_reason(reason, self._tool_counts.get(index, 0) > 0)
            chunks.append(self._chunk([_choice(index, {}, finish)]))
        return chunks

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }


def _choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}
