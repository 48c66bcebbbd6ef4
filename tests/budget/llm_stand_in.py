"""A local stand-in for the OpenAI Chat Completions and Responses and the Anthropic Messages HTTP APIs, for
the SDK guards' tests: the real SDK clients talk to it over HTTP on a free loopback port. It answers with
the configured text and usage, streams as Server-Sent Events over chunked HTTP/1.1 the way both providers
do, can drop the connection mid-stream (without the chunked body's end, so the client sees a broken
response, not an end), and records every request it receives."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    """What the stand-in answers: the reply in pieces (one stream chunk each), the usage it reports, after
    how many pieces a stream dies (None: never), or an HTTP error instead."""

    pieces: list[str] = field(default_factory=lambda: ["Your ", "order ", "ships ", "today."])
    prompt_tokens: int = 1200
    cached_tokens: int = 0  # OpenAI: prompt tokens read from its cache; Anthropic: cache reads
    cache_write_tokens: int = 0  # Anthropic: cache creation tokens
    completion_tokens: int = 40
    die_after: int | None = None
    error_status: int | None = None  # answer every request with this HTTP error instead


@dataclass
class Seen:
    path: str
    body: dict[str, Any]


class StandIn:
    """The server's state: its port, the script, and the requests seen (in order)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.script = Script()
        self.seen: list[Seen] = []
        self.clients: list[Any] = []  # SDK clients a test made for this server, to close in its loop

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def llm_stand_in() -> Iterator[StandIn]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    state = StandIn(server.server_address[1])
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="llm-stand-in", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output to the tests

    def do_POST(self) -> None:
        state: StandIn = self.server.state  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        state.seen.append(Seen(self.path, body))
        script = state.script
        if script.error_status is not None:
            self._json(
                {"error": {"message": "the stand-in refuses", "type": "server_error"}}, script.error_status
            )
        elif self.path.endswith("/chat/completions"):
            if body.get("stream"):
                self._stream(_openai_events(body, script), script.die_after, named=False)
            else:
                self._json(_openai_completion(body, script))
        elif self.path.endswith("/responses"):
            if body.get("stream"):
                self._stream(_responses_events(body, script), script.die_after, named=True)
            else:
                self._json(_response(body, script, "completed"))
        elif self.path.endswith("/messages"):
            if body.get("stream"):
                self._stream(_anthropic_events(body, script), script.die_after, named=True)
            else:
                self._json(_anthropic_message(body, script))
        else:
            self._json({"error": {"message": f"no such path {self.path}"}}, status=404)

    def _json(self, value: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: Iterator[tuple[str, str, bool]], die_after: int | None, named: bool) -> None:
        """Each event (name, data, is a content piece) as an SSE message in its own HTTP chunk."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        pieces = 0
        for name, data, is_piece in events:
            if die_after is not None and is_piece and pieces == die_after:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # no closing chunk: a broken body
                self.close_connection = True
                return
            pieces += is_piece
            message = (f"event: {name}\n" if named else "") + f"data: {data}\n\n"
            raw = message.encode()
            self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


def _openai_usage(script: Script) -> dict[str, Any]:
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": script.completion_tokens,
        "total_tokens": script.prompt_tokens + script.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": script.cached_tokens},
    }


def _openai_completion(body: dict[str, Any], script: Script) -> dict[str, Any]:
    message = {"role": "assistant", "content": "".join(script.pieces)}
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": _openai_usage(script),
    }


def _openai_events(body: dict[str, Any], script: Script) -> Iterator[tuple[str, str, bool]]:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}

    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        extra = {"usage": None} if include_usage else {}
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return json.dumps({**base, "choices": [choice], **extra})

    yield "", chunk({"role": "assistant", "content": ""}, None), False
    for piece in script.pieces:
        yield "", chunk({"content": piece}, None), True
    yield "", chunk({}, "stop"), False
    if include_usage:
        yield "", json.dumps({**base, "choices": [], "usage": _openai_usage(script)}), False
    yield "", "[DONE]", False


def _responses_usage(script: Script) -> dict[str, Any]:
    return {
        "input_tokens": script.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": script.cached_tokens,
            "cache_write_tokens": script.cache_write_tokens,
        },
        "output_tokens": script.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": script.prompt_tokens + script.completion_tokens,
    }


def _response(body: dict[str, Any], script: Script, status: str, text: str | None = None) -> dict[str, Any]:
    """A Responses API response object; `text` None: the whole reply, with its usage."""
    done = text is None
    content: dict[str, Any] = {
        "type": "output_text",
        "text": "".join(script.pieces) if done else text,
        "annotations": [],
    }
    message = {
        "type": "message",
        "id": "msg_standin",
        "role": "assistant",
        "status": status,
        "content": [content],
    }
    return {
        "id": "resp_standin",
        "object": "response",
        "created_at": 0,
        "status": status,
        "model": body.get("model"),
        "output": [message] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "max_output_tokens": body.get("max_output_tokens"),
        "usage": _responses_usage(script) if done else None,
    }


def _responses_events(body: dict[str, Any], script: Script) -> Iterator[tuple[str, str, bool]]:
    """The Responses API's streamed events, numbered; usage arrives only in response.completed."""
    sequence = iter(range(1_000))

    def event(name: str, **fields: Any) -> str:
        return json.dumps({"type": name, "sequence_number": next(sequence), **fields})

    where = {"item_id": "msg_standin", "output_index": 0, "content_index": 0}
    yield (
        "response.created",
        event("response.created", response=_response(body, script, "in_progress", "")),
        False,
    )
    item = {
        "type": "message",
        "id": "msg_standin",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    yield "response.output_item.added", event("response.output_item.added", output_index=0, item=item), False
    for piece in script.pieces:
        delta = event("response.output_text.delta", delta=piece, logprobs=[], **where)
        yield "response.output_text.delta", delta, True
    text = "".join(script.pieces)
    yield (
        "response.output_text.done",
        event("response.output_text.done", text=text, logprobs=[], **where),
        False,
    )
    completed = event("response.completed", response=_response(body, script, "completed"))
    yield "response.completed", completed, False


def _anthropic_usage(script: Script, output_tokens: int) -> dict[str, Any]:
    uncached = script.prompt_tokens - script.cached_tokens - script.cache_write_tokens
    return {
        "input_tokens": uncached,
        "cache_read_input_tokens": script.cached_tokens,
        "cache_creation_input_tokens": script.cache_write_tokens,
        "output_tokens": output_tokens,
    }


def _anthropic_message(body: dict[str, Any], script: Script) -> dict[str, Any]:
    return {
        "id": "msg_standin",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": "".join(script.pieces)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(script, script.completion_tokens),
    }


def _anthropic_events(body: dict[str, Any], script: Script) -> Iterator[tuple[str, str, bool]]:
    start = _anthropic_message(body, script) | {"content": [], "stop_reason": None}
    start["usage"] = _anthropic_usage(script, 1)
    yield "message_start", json.dumps({"type": "message_start", "message": start}), False
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    yield "content_block_start", json.dumps(block), False
    for piece in script.pieces:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        yield "content_block_delta", json.dumps(delta), True
    yield "content_block_stop", json.dumps({"type": "content_block_stop", "index": 0}), False
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": script.completion_tokens},
    }
    yield "message_delta", json.dumps(end), False
    yield "message_stop", json.dumps({"type": "message_stop"}), False
