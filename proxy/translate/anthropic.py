"""Translation between Anthropic's Messages API and OpenAI's chat completions.

Anthropic clients on OpenAI-format providers use `messages_to_chat_request`,
`chat_response_to_message` and `ChatToMessagesStream`. OpenAI-format clients
on Anthropic use `chat_to_messages_request`, `message_to_chat_response` and
`MessagesToChatStream`. Every function is pure: no I/O and no clock except
the `created` timestamp of OpenAI-format bodies.

The formats are those of Anthropic's Messages API (`anthropic-version:
2023-06-01`) and OpenAI's chat completions API. Anthropic's `input_tokens`
excludes cache reads and writes while OpenAI's `prompt_tokens` includes
them, so usage is converted in both directions such that
`parse_openai_usage` and `parse_anthropic_usage` give the same `TokenUsage`.

A request that cannot be expressed in the other format raises
`InvalidRequestError` naming the field. Fields with no counterpart that do
not change the meaning of the response (`top_k`, `thinking`, `seed`)
are dropped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from gateway_core.errors import InvalidRequestError, UpstreamError
from gateway_core.pricing import parse_anthropic_usage, parse_openai_usage

# Anthropic requires `max_tokens` and OpenAI does not, so a chat request
# without a limit gets this one, which every current Claude model accepts.
DEFAULT_MAX_TOKENS = 4096

_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICE_TO_CHAT = {"auto": "auto", "any": "required", "none": "none"}
_TOOL_CHOICE_TO_MESSAGES = {"auto": "auto", "required": "any", "none": "none"}


# Anthropic Messages request -> OpenAI chat request.


def messages_to_chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Translate an Anthropic Messages request body into an OpenAI chat request body."""
    chat: dict[str, Any] = {"model": body.get("model"), "messages": _chat_messages(body)}
    if body.get("max_tokens") is not None:
        # NOTE: OpenAI's reasoning models reject `max_tokens` and want
        # `max_completion_tokens`, but most OpenAI-compatible servers only
        # know `max_tokens`, so that is the one sent.
        chat["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if body.get("tools"):
        chat["tools"] = [_chat_tool(tool, i) for i, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        _apply_chat_tool_choice(chat, body["tool_choice"])
    schema = _output_schema(body.get("output_config"))
    if schema is not None:
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }
    return chat


def _chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = _system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    source = body.get("messages")
    if not isinstance(source, list):
        raise InvalidRequestError("messages must be a list", param="messages")
    for i, message in enumerate(source):
        param = f"messages[{i}]"
        if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequestError(
                f"{param} must be an object with role 'user' or 'assistant'", param=param
            )
        content = message.get("content")
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
        elif not isinstance(content, list):
            raise InvalidRequestError(
                f"{param}.content must be a string or a list of content blocks",
                param=f"{param}.content",
            )
        elif message["role"] == "user":
            messages.extend(_user_blocks_to_chat(content, param))
        else:
            messages.append(_assistant_blocks_to_chat(content, param))
    return messages


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n\n".join(
            block.get("text", "")
            for block in system
            if isinstance(block, Mapping) and block.get("type") == "text"
        )
    return ""


def _user_blocks_to_chat(blocks: list[Any], param: str) -> list[dict[str, Any]]:
    # Tool results become `role: tool` messages placed first, because OpenAI
    # wants them right after the assistant message that made the calls.
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        block_param = f"{param}.content[{j}]"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "tool_result":
            tool_messages.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    # NOTE: OpenAI has no `is_error`, so an error result
                    # reaches the model as its text only.
                    "content": _tool_result_text(block.get("content"), block_param),
                }
            )
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_part(block, block_param))
        elif kind == "document":
            parts.append(_document_part(block, block_param))
        else:
            raise _untranslatable_block(kind, block_param)
    if parts:
        tool_messages.append({"role": "user", "content": _chat_content(parts)})
    return tool_messages


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    # A lone text part is sent as a plain string, which every server accepts.
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _tool_result_text(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for k, block in enumerate(content if isinstance(content, list) else [content]):
        if not isinstance(block, Mapping) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, Mapping) else None
            raise InvalidRequestError(
                f"{param}.content[{k}]: tool results sent to an OpenAI-format provider "
                f"may contain only text, not {kind!r}",
                param=f"{param}.content[{k}]",
            )
        texts.append(block.get("text", ""))
    return "\n".join(texts)


def _image_part(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        return {"type": "image_url", "image_url": {"url": url}}
    if isinstance(source, Mapping) and source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url")}}
    raise InvalidRequestError(
        f"{param}: only base64 and url image sources can be sent to this provider",
        param=f"{param}.source",
    )


def _document_part(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        data_url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        filename = block.get("title") or "document.pdf"
        return {"type": "file", "file": {"file_data": data_url, "filename": filename}}
    if isinstance(source, Mapping) and source.get("type") == "text":
        return {"type": "text", "text": source.get("data", "")}
    raise InvalidRequestError(
        f"{param}: only base64 and text document sources can be sent to this provider",
        param=f"{param}.source",
    )


def _assistant_blocks_to_chat(blocks: list[Any], param: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = _json_text(block.get("input") or {})
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            # Thinking is only meaningful, and only signed, for Anthropic.
            continue
        else:
            raise _untranslatable_block(kind, f"{param}.content[{j}]")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _untranslatable_block(kind: Any, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{param}: content block type {kind!r} cannot be sent to an OpenAI-format "
        "provider; use a model served by Anthropic",
        param=param,
    )


def _chat_tool(tool: Any, index: int) -> dict[str, Any]:
    param = f"tools[{index}]"
    if not isinstance(tool, Mapping) or "input_schema" not in tool:
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        raise InvalidRequestError(
            f"{param}: tool type {kind!r} runs on Anthropic's servers and cannot be sent "
            "to an OpenAI-format provider; only tools with an input_schema can",
            param=param,
        )
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _apply_chat_tool_choice(chat: dict[str, Any], choice: Any) -> None:
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind in _TOOL_CHOICE_TO_CHAT:
        chat["tool_choice"] = _TOOL_CHOICE_TO_CHAT[kind]
    elif kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        raise InvalidRequestError(
            f"tool_choice type {kind!r} is not one of auto, any, tool, none",
            param="tool_choice",
        )
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _output_schema(output_config: Any) -> Any:
    if not isinstance(output_config, Mapping):
        return None
    output_format = output_config.get("format")
    if isinstance(output_format, Mapping) and output_format.get("type") == "json_schema":
        return output_format.get("schema")
    return None


# OpenAI chat completion -> Anthropic message.


def chat_response_to_message(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Translate an OpenAI chat completion into an Anthropic message for `model`."""
    choices = body.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], Mapping) else {}
    message = choice.get("message") or {}

    content: list[dict[str, Any]] = []
    text = _message_text(message.get("content"))
    refusal = message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})

    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _new_id("toolu_"),
                "name": function.get("name"),
                "input": _tool_input(function.get("arguments")),
            }
        )

    stop_reason, stop_sequence = _stop_reason(choice, bool(calls))
    if refusal and not text:
        stop_reason = "refusal"

    return {
        "id": _message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(body.get("usage")),
    }


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def _tool_input(arguments: Any) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            "the provider returned tool call arguments that are not a JSON object: "
            f"{str(arguments)[:200]!r}"
        )
    return value


def _stop_reason(choice: Mapping[str, Any], has_tool_calls: bool) -> tuple[str, str | None]:
    finish = choice.get("finish_reason")
    if has_tool_calls and finish in (None, "stop", "tool_calls", "function_call"):
        # Some servers (Ollama among them) report "stop" after tool calls.
        return "tool_use", None
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str):
        # vLLM reports the stop string that matched in `stop_reason`. OpenAI
        # reports none, so its responses end with `end_turn`.
        return "stop_sequence", matched
    return _FINISH_TO_STOP.get(finish, "end_turn"), None


def _message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return chat_id
    return _new_id("msg_")


def anthropic_usage(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """Convert an OpenAI usage object into Anthropic's usage fields."""
    parsed = parse_openai_usage(usage)
    uncached = parsed.prompt_tokens - parsed.cached_tokens - parsed.cache_write_tokens
    return {
        "input_tokens": uncached,
        "output_tokens": parsed.completion_tokens,
        "cache_creation_input_tokens": parsed.cache_write_tokens,
        "cache_read_input_tokens": parsed.cached_tokens,
    }


def openai_usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Convert an Anthropic usage object into OpenAI's usage fields."""
    parsed = parse_anthropic_usage(usage)
    return {
        "prompt_tokens": parsed.prompt_tokens,
        "completion_tokens": parsed.completion_tokens,
        "total_tokens": parsed.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": parsed.cached_tokens,
            "cache_write_tokens": parsed.cache_write_tokens,
        },
    }


class ChatToMessagesStream:
    """Turn OpenAI `chat.completion.chunk` dicts into Anthropic stream events.

    Call `feed` with each decoded chunk, then `finish` once at `[DONE]` or
    at the end of the upstream stream. Each returned event is the bytes
    `event: NAME\\ndata: JSON\\n\\n`. OpenAI sends usage in its last chunk,
    after `finish_reason`, so `message_delta` (stop reason and usage) and
    `message_stop` are held back until `finish`. Only choice 0 is read.
    """

    def __init__(self, model: str, message_id: str | None = None) -> None:
        self._model = model
        self._message_id = message_id
        self._started = False
        self._finished = False
        self._next_block = 0
        # ("text", None) or ("tool_use", OpenAI tool call index) of the open block.
        self._open: tuple[str, int | None] | None = None
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self._has_tool_calls = False
        self._usage: Mapping[str, Any] | None = None

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        if not self._started:
            events.append(self._message_start(chunk.get("id")))
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                events.extend(self._feed_choice(choice))
        return events

    def finish(self) -> list[bytes]:
        if self._finished:
            return []
        self._finished = True
        events: list[bytes] = []
        if not self._started:
            events.append(self._message_start(None))
        events.extend(self._close_block())
        stop_reason = self._stop_reason or ("tool_use" if self._has_tool_calls else "end_turn")
        delta = {"stop_reason": stop_reason, "stop_sequence": self._stop_sequence}
        usage = anthropic_usage(self._usage)
        events.append(
            sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        )
        events.append(sse_event("message_stop", {"type": "message_stop"}))
        return events

    def _message_start(self, chunk_id: Any) -> bytes:
        self._started = True
        message_id = self._message_id or _message_id(chunk_id)
        # OpenAI reports usage only at the end, so the input count starts at
        # 0 here and the real one arrives in `message_delta`.
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def _feed_choice(self, choice: Mapping[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            events.extend(self._text_delta(text))
        for call in delta.get("tool_calls") or []:
            if isinstance(call, Mapping):
                events.extend(self._tool_call_delta(call))
        finish = choice.get("finish_reason")
        if finish:
            events.extend(self._close_block())
            self._stop_reason, self._stop_sequence = _stop_reason(choice, self._has_tool_calls)
        return events

    def _text_delta(self, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self._open != ("text", None):
            events.extend(self._close_block())
            events.append(self._block_start({"type": "text", "text": ""}))
            self._open = ("text", None)
        delta = {"type": "text_delta", "text": text}
        events.append(self._block_delta(delta))
        return events

    def _tool_call_delta(self, call: Mapping[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if self._open != ("tool_use", index):
            # A new tool call index opens a new tool_use block. OpenAI streams
            # parallel calls one after another, so a closed one never resumes.
            events.extend(self._close_block())
            block = {
                "type": "tool_use",
                "id": call.get("id") or _new_id("toolu_"),
                "name": function.get("name") or "",
                "input": {},
            }
            events.append(self._block_start(block))
            self._open = ("tool_use", index)
            self._has_tool_calls = True
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(
                self._block_delta({"type": "input_json_delta", "partial_json": arguments})
            )
        return events

    def _block_start(self, block: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_start", "index": self._next_block, "content_block": block}
        return sse_event("content_block_start", payload)

    def _block_delta(self, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self._next_block, "delta": delta}
        return sse_event("content_block_delta", payload)

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        payload = {"type": "content_block_stop", "index": self._next_block}
        self._next_block += 1
        return [sse_event("content_block_stop", payload)]


def sse_event(name: str, payload: Mapping[str, Any]) -> bytes:
    """Encode one named server-sent event as Anthropic sends them."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# OpenAI chat request -> Anthropic Messages request.


def chat_to_messages_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Translate an OpenAI chat request body into an Anthropic Messages request body."""
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequestError("Anthropic models return one choice; set n to 1", param="n")
    system, messages = _anthropic_messages(body.get("messages"))
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    request: dict[str, Any] = {"model": body.get("model"), "max_tokens": limit}
    if system:
        request["system"] = system
    request["messages"] = messages
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            request[key] = body[key]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        request["stream"] = True
    if isinstance(body.get("user"), str):
        request["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        request["tools"] = [_anthropic_tool(tool, i) for i, tool in enumerate(body["tools"])]
    _apply_messages_tool_choice(request, body.get("tool_choice"), body.get("parallel_tool_calls"))
    schema = _response_schema(body.get("response_format"))
    if schema is not None:
        request["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    return request


def _anthropic_messages(source: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(source, list):
        raise InvalidRequestError("messages must be a list", param="messages")
    system_parts: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(source):
        param = f"messages[{i}]"
        role = message.get("role") if isinstance(message, Mapping) else None
        if role in ("system", "developer"):
            # Anthropic has one top-level system prompt, so every system
            # message is joined into it, wherever it stood.
            system_parts.append(_message_text(message.get("content")))
        elif role == "user":
            _append(messages, "user", _user_content(message.get("content"), param))
        elif role == "assistant":
            _append(messages, "assistant", _assistant_content(message, param))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": _message_text(message.get("content")),
            }
            _append(messages, "user", [result])
        else:
            raise InvalidRequestError(
                f"{param}.role {role!r} is not one of system, developer, user, assistant, tool",
                param=f"{param}.role",
            )
    return "\n\n".join(part for part in system_parts if part), messages


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    # Consecutive messages of one role are merged, so that the tool results
    # for one assistant turn arrive together in a single user message.
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _user_content(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"{param}.content must be a string or a list of content parts",
            param=f"{param}.content",
        )
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            blocks.append({"type": "image", "source": _media_source(url, part_param)})
        elif kind == "file":
            blocks.append(_document_block(part.get("file"), part_param))
        else:
            raise InvalidRequestError(
                f"{part_param}: content part type {kind!r} cannot be sent to Anthropic",
                param=part_param,
            )
    return blocks


def _media_source(url: Any, param: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise InvalidRequestError(f"{param}: the url is missing", param=param)
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type, _, encoding = header.removeprefix("data:").partition(";")
        if encoding != "base64" or not data:
            raise InvalidRequestError(
                f"{param}: data URLs must be base64 encoded (data:TYPE;base64,...)",
                param=param,
            )
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _document_block(file: Any, param: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, Mapping) else None
    if not isinstance(data, str):
        raise InvalidRequestError(
            f"{param}: only files sent inline as file_data can be sent to Anthropic",
            param=param,
        )
    block: dict[str, Any] = {"type": "document", "source": _media_source(data, param)}
    if file.get("filename"):
        block["title"] = file["filename"]
    return block


def _assistant_content(message: Mapping[str, Any], param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _message_text(message.get("content"))
    if text:
        # Anthropic rejects empty text blocks, so only non-empty text is sent.
        blocks.append({"type": "text", "text": text})
    for j, call in enumerate(message.get("tool_calls") or []):
        call_param = f"{param}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise InvalidRequestError(f"{call_param}.function is missing", param=call_param)
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _call_arguments(function.get("arguments"), call_param),
            }
        )
    return blocks


def _call_arguments(arguments: Any, param: str) -> dict[str, Any]:
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


def _anthropic_tool(tool: Any, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
        raise InvalidRequestError(
            f"tools[{index}] must be a function tool", param=f"tools[{index}]"
        )
    result: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        result["description"] = function["description"]
    return result


def _apply_messages_tool_choice(request: dict[str, Any], choice: Any, parallel: Any) -> None:
    tool_choice: dict[str, Any] | None = None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_TO_MESSAGES:
            raise InvalidRequestError(
                f"tool_choice {choice!r} is not one of auto, required, none",
                param="tool_choice",
            )
        tool_choice = {"type": _TOOL_CHOICE_TO_MESSAGES[choice]}
    elif isinstance(choice, Mapping):
        function = choice.get("function") or {}
        tool_choice = {"type": "tool", "name": function.get("name")}
    if parallel is False:
        tool_choice = tool_choice or {"type": "auto"}
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    if tool_choice is not None:
        request["tool_choice"] = tool_choice


def _response_schema(response_format: Any) -> Any:
    # NOTE: `json_object` mode has no schema and Anthropic has no schemaless
    # JSON mode, so such requests reach Anthropic as plain text requests.
    if not isinstance(response_format, Mapping):
        return None
    if response_format.get("type") != "json_schema":
        return None
    json_schema = response_format.get("json_schema")
    return json_schema.get("schema") if isinstance(json_schema, Mapping) else None


# Anthropic message -> OpenAI chat completion.


def message_to_chat_response(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Translate an Anthropic message into an OpenAI chat completion for `model`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in body.get("content") or []:
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            function = {"name": block.get("name"), "arguments": _json_text(block.get("input"))}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _STOP_TO_FINISH.get(body.get("stop_reason"), "stop"),
    }
    return {
        "id": _completion_id(body.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": openai_usage(body.get("usage")),
    }


def _completion_id(message_id: Any) -> str:
    if isinstance(message_id, str) and message_id:
        return message_id
    return _new_id("chatcmpl-")


class MessagesToChatStream:
    """Turn Anthropic stream events into OpenAI `chat.completion.chunk` dicts.

    Call `feed` with each event's decoded data. The last chunk, sent on
    `message_stop`, has `choices: []` and the usage from `message_start`
    updated by `message_delta` (whose counts are cumulative). `done` turns
    true at `message_stop`; a stream that ends before it was cut short.
    Thinking blocks and unknown event types produce no chunks. `error`
    events are the caller's to map to a gateway error: `feed` raises
    `ValueError` on them.
    """

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = _new_id("chatcmpl-")
        self._created = int(time.time())
        self._usage: dict[str, Any] = {}
        # Anthropic content block index -> OpenAI tool call index.
        self._tool_indexes: dict[int, int] = {}
        self.done = False

    def feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type")
        if kind == "message_start":
            return self._message_start(data.get("message") or {})
        if kind == "content_block_start":
            return self._block_start(data.get("index", 0), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(data.get("index", 0), data.get("delta") or {})
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "message_stop":
            self.done = True
            usage_chunk = self._chunk([])
            usage_chunk["usage"] = openai_usage(self._usage)
            return [usage_chunk]
        if kind == "error":
            raise ValueError("Anthropic error events must be handled before feed()")
        return []

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish_reason}])

    def _message_start(self, message: Mapping[str, Any]) -> list[dict[str, Any]]:
        if isinstance(message.get("id"), str):
            self._id = message["id"]
        if isinstance(message.get("usage"), Mapping):
            self._usage = dict(message["usage"])
        return [self._delta({"role": "assistant", "content": ""})]

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        if block.get("type") == "text" and block.get("text"):
            return [self._delta({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        tool_index = len(self._tool_indexes)
        self._tool_indexes[index] = tool_index
        arguments = _json_text(block["input"]) if block.get("input") else ""
        call = {
            "index": tool_index,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": arguments},
        }
        return [self._delta({"tool_calls": [call]})]

    def _block_delta(self, index: int, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        if delta.get("type") == "text_delta":
            return [self._delta({"content": delta.get("text", "")})]
        if delta.get("type") == "input_json_delta" and index in self._tool_indexes:
            call = {
                "index": self._tool_indexes[index],
                "function": {"arguments": delta.get("partial_json", "")},
            }
            return [self._delta({"tool_calls": [call]})]
        return []

    def _message_delta(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        usage = data.get("usage")
        if isinstance(usage, Mapping):
            self._usage.update({key: value for key, value in usage.items() if value is not None})
        stop_reason = (data.get("delta") or {}).get("stop_reason")
        if stop_reason is None:
            return []
        return [self._delta({}, _STOP_TO_FINISH.get(stop_reason, "stop"))]


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]
