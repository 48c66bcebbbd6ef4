"""An upper bound on a prompt's tokens without the provider's tokenizer.

A byte-level BPE token (OpenAI's and Anthropic's tokenizers both are) stands for at least one byte of UTF-8,
so a prompt's UTF-8 byte count bounds its token count from above. The bound used here is the byte count of
the request's messages, system prompt and tool definitions serialized as JSON (which holds every byte of
their text, and quotes, keys and punctuation besides), plus a few tokens per message for the chat format's
role markers, plus a fixed allowance for each image or file given by URL or file id (its bytes are not in
the request).

It over-reserves, typically three to four times for English text, and that is the safe side: the
enforcer holds the bound only until the call's usage report settles the reservation to what the provider
billed, so over-reserving can at worst refuse or degrade a call that would just have fit, while
under-reserving could let a call spend past the cap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

PER_MESSAGE_TOKENS = 8  # role markers and separators the chat format adds around each message
PER_REQUEST_TOKENS = 16  # the reply's priming tokens and the format's framing
# Media a request names by URL or file id (not inline as base64): its tokens are not bounded by any bytes
# in the request. 2,500 covers one image at the largest size OpenAI's and Anthropic's vision models
# take (their documented costs top out near 1,600 tokens, and OpenAI's patch-based models near 2,500);
# a multi-page document by URL can cost far more: pass max_input_tokens for such calls.
REMOTE_MEDIA_TOKENS = 2_500


def prompt_token_bound(*parts: object, messages: Iterable[object] = ()) -> int:
    """Tokens the prompt made of `messages` and the other request `parts` (system prompt, tools, ...;
    None is skipped) can take at most, by the module's rule."""
    messages = list(messages)
    payload = [part for part in parts if part is not None] + messages
    return (
        _json_bytes(payload)
        + PER_MESSAGE_TOKENS * len(messages)
        + PER_REQUEST_TOKENS
        + REMOTE_MEDIA_TOKENS * _remote_media(payload)
    )


def listed(params: dict[str, Any], *keys: str) -> None:
    """Make each of `params`' values under `keys` that is a one-pass iterable (a generator, say) a list, in
    place: the bound then measures the items the SDK sends, where reading an iterator to measure it would
    send it empty, and serializing it as JSON would measure its name, not its items."""
    for key in keys:
        value = params.get(key)
        if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping | list | tuple):
            params[key] = list(value)


def _json_bytes(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=_plain).encode())


def _plain(value: object) -> object:
    """SDK objects (pydantic models) as their dicts; anything else as its text."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    return str(value)


def _remote_media(value: object) -> int:
    """How many parts name their content by URL (not a data: URL) or by file id."""
    if isinstance(value, Mapping):
        here = 0
        url = value.get("url")
        if (isinstance(url, str) and not url.startswith("data:")) or isinstance(value.get("file_id"), str):
            here = 1
        return here + sum(_remote_media(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_remote_media(item) for item in value)
    plain = _plain(value) if hasattr(value, "model_dump") else None
    return _remote_media(plain) if plain is not None else 0


def text_bytes(*texts: Any) -> int:
    """UTF-8 bytes of the strings among `texts` (None and other values count 0)."""
    return sum(len(text.encode()) for text in texts if isinstance(text, str))
