"""A stand-in for the OpenAI and Anthropic HTTP APIs, on loopback, for tests of the real SDKs.

It answers `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic) in each provider's
wire format, as JSON or as a server-sent event stream, with the usage numbers it is configured with,
and records every request it receives (so a test can assert that no provider call was made).
The token-counting APIs too: Anthropic's `POST /v1/messages/count_tokens` (`{"input_tokens": N}`) and
Gemini's `POST /{version}/models/{model}:countTokens` (`{"totalTokens": N}`), each with a configurable
delay and status; their error bodies echo the API key, as a careless server might, so tests can show
that a key never travels back into answers or logs.
`drop_after=N` makes a stream stop after N content events without finishing its chunked body, as a
dropped connection does; `delay` paces a stream's events (a long stream). Run as a script, it serves
until interrupted and prints its base URL.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class OpenAIUsage:
    prompt_tokens: int = 40
    cached_tokens: int = 8
    completion_tokens: int = 30
    reasoning_tokens: int = 5


@dataclass
class AnthropicUsage:
    input_tokens: int = 25
    cache_read_input_tokens: int = 6
    cache_creation_input_tokens: int = 4
    output_tokens: int = 18


@dataclass
class Behaviour:
    # The reply, sent as one content event per piece when streamed.
    pieces: list[str] = field(
        default_factory=lambda: [
            "The ledger ",
            "reserves tokens ",
            "before each call ",
            "and settles ",
            "after.",
        ]
    )
    openai_usage: OpenAIUsage = field(default_factory=OpenAIUsage)
    anthropic_usage: AnthropicUsage = field(default_factory=AnthropicUsage)
    drop_after: int | None = None  # streams: stop after this many content events, body unfinished
    delay: float = 0.0  # streams: seconds before each event
    status: int = 200  # a non-200 status answers with the provider's error body
    count_tokens: int | None = None  # token-counting answers; None: 7 + characters // 4 of the request
    count_delay: float = 0.0  # seconds before a token-counting answer
    count_status: int = 200

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class ProviderStandin:
    """`with ProviderStandin() as provider:` serves on 127.0.0.1 until the block ends."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="provider-standin", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> ProviderStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ProviderStandin:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- wire formats --------------------------------------------------------------------------------


def openai_usage(usage: OpenAIUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens, "audio_tokens": 0},
    }


def openai_completion(model: str, behaviour: Behaviour) -> dict[str, Any]:
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": behaviour.text, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": openai_usage(behaviour.openai_usage),
    }


def openai_chunks(model: str, behaviour: Behaviour, include_usage: bool) -> list[dict[str, Any]]:
    base = {
        "id": "chatcmpl-standin",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
    }
    chunks = []
    for index, piece in enumerate(behaviour.pieces):
        delta = {"role": "assistant", "content": piece} if index == 0 else {"content": piece}
        chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": openai_usage(behaviour.openai_usage)})
    return chunks


def anthropic_usage(usage: AnthropicUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "output_tokens": output_tokens,
    }


def anthropic_message(model: str, behaviour: Behaviour) -> dict[str, Any]:
    return {
        "id": "msg_standin",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": behaviour.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(behaviour.anthropic_usage, behaviour.anthropic_usage.output_tokens),
    }


def anthropic_events(model: str, behaviour: Behaviour) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs; the text deltas are the only "content" events."""
    start = anthropic_message(model, behaviour)
    start.update(content=[], stop_reason=None, usage=anthropic_usage(behaviour.anthropic_usage, 1))
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
    ]
    for piece in behaviour.pieces:
        events.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": behaviour.anthropic_usage.output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


# --- the server ----------------------------------------------------------------------------------


def _handler(standin: ProviderStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            standin.record(Recorded(self.path, body, {k.lower(): v for k, v in self.headers.items()}))
            behaviour = standin.behaviour
            model = str(body.get("model", "unknown"))
            if self.path == "/v1/messages/count_tokens" or self.path.endswith(":countTokens"):
                return self._count(body, behaviour)
            if self.path == "/v1/chat/completions":
                if behaviour.status != 200:
                    return self._json(
                        behaviour.status, {"error": {"message": "stand-in error", "type": "server"}}
                    )
                if body.get("stream"):
                    include = bool((body.get("stream_options") or {}).get("include_usage"))
                    chunks = openai_chunks(model, behaviour, include)
                    return self._sse([(None, c) for c in chunks], behaviour.drop_after, openai_done=True)
                return self._json(200, openai_completion(model, behaviour))
            if self.path == "/v1/messages":
                if behaviour.status != 200:
                    return self._json(
                        behaviour.status,
                        {"type": "error", "error": {"type": "api_error", "message": "stand-in"}},
                    )
                if body.get("stream"):
                    return self._sse(list(anthropic_events(model, behaviour)), behaviour.drop_after)
                return self._json(200, anthropic_message(model, behaviour))
            return self._json(404, {"error": {"message": f"no route {self.path}"}})

        def _count(self, body: dict[str, Any], behaviour: Behaviour) -> None:
            time.sleep(behaviour.count_delay)
            gemini = self.path.endswith(":countTokens")
            key = api_key(self.headers)
            if behaviour.count_status != 200:
                message = f"stand-in refused key={key}"
                error = {"code": behaviour.count_status, "message": message, "status": "INTERNAL"}
                anthropic_error = {"type": "error", "error": {"type": "api_error", "message": message}}
                return self._json(behaviour.count_status, {"error": error} if gemini else anthropic_error)
            tokens = behaviour.count_tokens
            if tokens is None:
                tokens = (
                    7
                    + len(json.dumps(body.get("contents") or [body.get("system"), body.get("messages")])) // 4
                )
            return self._json(200, {"totalTokens": tokens} if gemini else {"input_tokens": tokens})

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _sse(
            self,
            events: list[tuple[str | None, dict[str, Any]]],
            drop_after: int | None,
            openai_done: bool = False,
        ) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            content_events = 0
            for name, data in events:
                time.sleep(standin.behaviour.delay)
                text = (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
                self._chunk(text.encode())
                if _is_content(data):
                    content_events += 1
                    if drop_after is not None and content_events >= drop_after:
                        self.wfile.flush()
                        self.close_connection = True  # no terminating chunk: an incomplete body
                        return
            if openai_done:
                self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def api_key(headers: Any) -> str:
    """The key a request carried: Anthropic's `x-api-key` (or, in newer SDKs, a bearer token), Gemini's
    `x-goog-api-key`."""
    bearer = headers.get("authorization", "").removeprefix("Bearer ")
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or bearer


def _is_content(data: dict[str, Any]) -> bool:
    if data.get("type") == "content_block_delta":
        return True
    choices = data.get("choices") or []
    return any((c.get("delta") or {}).get("content") for c in choices)


if __name__ == "__main__":
    with ProviderStandin() as provider:
        print(provider.base_url, flush=True)
        threading.Event().wait()
