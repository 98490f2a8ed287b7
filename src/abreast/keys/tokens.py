"""What a provider's answers say they used, read as they stream through the key proxy.

Anthropic and OpenAI answers carry a `usage` object, Gemini's a `usageMetadata`: whole
in a JSON answer; in a streamed one (server-sent events) in the events that open and
close the message (Anthropic's `message_start` and `message_delta`, OpenAI's last chunk
or its Responses API's `response.completed`, every Gemini chunk), where a later figure
of a kind repeats and grows an earlier one. Each answer's figure of each kind is
therefore the largest seen in it. Gemini's `promptTokenCount` includes cached content
(as OpenAI's input does), and its output is the candidates' tokens and the thinking's.

Only what the answer says is counted, never estimated: an answer that says nothing (an
OpenAI stream asked without `stream_options.include_usage`, an error) counts nothing,
and one compressed other than by gzip or deflate (`br`), or a JSON answer over
MAX_JSON_BYTES, is passed on whole but not read.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, fields
from typing import Any, TypeGuard

MAX_JSON_BYTES = 8 << 20  # a whole JSON answer is read for its usage up to this size
MAX_LINE_BYTES = 1 << 20  # an event line longer than this is passed on unread

# The names providers give each kind (Anthropic, OpenAI chat, OpenAI Responses API).
_KINDS = {
    "input_tokens": "input",
    "prompt_tokens": "input",
    "output_tokens": "output",
    "completion_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_write",
}


@dataclass
class Tokens:
    """Tokens used, by kind, as the provider counts them (Anthropic's `input` leaves out
    cached input, given in `cache_read` and `cache_write`; OpenAI's includes it)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def add(self, other: Tokens) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, other: Tokens) -> Tokens:
        return Tokens(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    @property
    def spent(self) -> int:
        """What `max_tokens` counts: input + output, as the provider counts them."""
        return self.input + self.output

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


class UsageReader:
    """Fed an answer's body part by part, as it is passed on; `tokens()` says what the
    answer said it used (all zero when it said nothing that could be read)."""

    def __init__(self, headers: dict[str, str]) -> None:
        kind = headers.get("content-type", "").lower()
        self._events = "text/event-stream" in kind
        self._json = not self._events and "json" in kind
        encoding = headers.get("content-encoding", "identity").strip().lower()
        self._inflate: Any = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(47)  # gzip or zlib, told by its header
        elif encoding not in ("", "identity"):
            self._events = self._json = False  # br, zstd: not read
        self._buffer = bytearray()
        self._skipping = False  # the rest of an over-long line
        self._seen: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        if not (self._events or self._json):
            return
        if self._inflate is not None:
            try:
                chunk = self._inflate.decompress(chunk, MAX_JSON_BYTES)
                broken = bool(self._inflate.unconsumed_tail)  # a part of 8 MiB or more
            except zlib.error:
                broken = True
            if broken:
                self._events = self._json = False
                self._buffer.clear()
                return
        if self._json:
            if len(self._buffer) + len(chunk) > MAX_JSON_BYTES:
                self._json = False
                self._buffer.clear()
                return
            self._buffer += chunk
            return
        buffer = self._buffer
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
            # Most events are text deltas: only one that names usage (`"usage"`, or
            # Gemini's `"usageMetadata"`) is parsed.
            elif buffer.startswith(b"data:", start) and buffer.find(b'"usage', start, end) >= 0:
                self._take(bytes(buffer[start + 5 : end]))
            start = end + 1
        del buffer[:start]  # what is left: the start of a line
        if len(buffer) > MAX_LINE_BYTES:
            buffer.clear()
            self._skipping = True

    def tokens(self) -> Tokens:
        if self._json and self._buffer:
            self._take(bytes(self._buffer))
            self._buffer.clear()
        return Tokens(**self._seen)

    def _take(self, text: bytes) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            return
        for item in data if isinstance(data, list) else [data]:  # a Gemini stream not as SSE
            if isinstance(item, dict):
                self._take_one(item)

    def _take_one(self, data: dict[str, Any]) -> None:
        gemini = data.get("usageMetadata")
        if isinstance(gemini, dict):
            counts = {name: value for name, value in gemini.items() if _count(value)}
            seen = {
                "input": counts.get("promptTokenCount", 0),  # cached content included
                # thinking is output too, billed as such
                "output": counts.get("candidatesTokenCount", 0)
                + counts.get("thoughtsTokenCount", 0),
                "cache_read": counts.get("cachedContentTokenCount", 0),
            }
            for kind, count in seen.items():
                self._seen[kind] = max(self._seen.get(kind, 0), count)
        for holder in (data, data.get("message"), data.get("response")):
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if not isinstance(usage, dict):
                continue
            for name, kind in _KINDS.items():
                value = usage.get(name)
                if _count(value):
                    self._seen[kind] = max(self._seen.get(kind, 0), value)


def _count(value: object) -> TypeGuard[int]:
    """Whether an answer's figure is a count (not `true`, `-1` or `"5"`)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
