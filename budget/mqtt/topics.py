"""margins' MQTT topics: where applications publish usage, authorizations and renewals, where admins set
caps, and where the enforcer answers, keeps status and raises alerts -- and which topics the enforcer may
publish to at all.

A broker that receives a PUBLISH whose topic it considers malformed drops the whole connection (mosquitto
answers DISCONNECT 0x81), so one bad reply topic taken from a request would cost the enforcer its session:
every topic it publishes to is checked here first.
"""

from __future__ import annotations

import re

USAGE_PREFIX = "margins/usage/"
AUTHORIZE_PREFIX = "margins/authorize/"
RENEW_PREFIX = "margins/renew/"
ADMIN_PREFIX = "margins/admin/users/"
# Replies (answers, confirmations) go only here. Not elsewhere under margins/: the enforcer publishes
# status, so a reply topic naming margins/status/<victim> would forge another user's status. Not outside
# margins/ either: the enforcer's ACL grants it margins/replies/# and no more, and a publish the broker's
# ACL denies costs the enforcer its connection on mosquitto before 2.0.22 with `max_queued_messages 0`
# (the broker answers PUBACK 0x87, then disconnects with "quota exceeded") -- an application could keep it
# reconnecting by asking for replies elsewhere.
REPLY_PREFIX = "margins/replies/"
STATUS_PREFIX = "margins/status/"
ALERT_PREFIX = "margins/alerts/"

MAX_TOPIC_BYTES = 65_535  # a UTF-8 string in MQTT carries a two-byte length
MAX_REPLY_TOPIC_CHARS = 512  # margins' own limit: a reply address, not a document

# The code points MQTT 5 (section 1.5.4) says a receiver may treat as malformed, and which mosquitto does
# reject: U+0000, the C0 and C1 controls and DEL, the non-characters U+FDD0-U+FDEF and the last two code
# points of every plane; plus lone surrogates (text that is not valid UTF-8 at all) and the wildcards,
# which no topic name may hold.
_NONCHARACTERS = "".join(f"\\U{plane:04x}fffe\\U{plane:04x}ffff" for plane in range(0x11))
_FORBIDDEN = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f\\ufdd0-\\ufdef{_NONCHARACTERS}\\ud800-\\udfff+#]")
_FORBIDDEN_ASCII = re.compile("[\\x00-\\x1f\\x7f+#]")  # the same for ASCII text, eight times faster


def status_topic(user_id: str) -> str:
    """Where a user's retained status is published."""
    return f"{STATUS_PREFIX}{user_id}"


def alert_topic(user_id: str) -> str:
    """Where a user's alerts are published."""
    return f"{ALERT_PREFIX}{user_id}"


def topic_problem(topic: str) -> str | None:
    """Why a broker would refuse a PUBLISH to `topic` (so the enforcer must not send it), or None.

    Refused: the empty topic, more than 65,535 bytes of UTF-8, a code point MQTT lets a receiver treat as
    malformed (U+0000-U+001F, U+007F-U+009F, U+FDD0-U+FDEF, U+nFFFE and U+nFFFF), a lone surrogate, a
    wildcard (+ or #), or a leading $ (the broker's own topics).
    """
    if not topic:
        return "topic is empty"
    if topic[0] == "$":
        return f"topic {topic[:80]!r} starts with $ (the broker's own topics)"
    bad = (_FORBIDDEN_ASCII if topic.isascii() else _FORBIDDEN).search(topic)
    if bad is not None:
        char = bad.group()
        kind = "a wildcard" if char in "+#" else f"U+{ord(char):04X}, which MQTT may treat as malformed"
        return f"topic {topic[:80]!r} holds {kind} at character {bad.start()}"
    if len(topic) > MAX_TOPIC_BYTES // 4 and len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"topic is {len(topic.encode()):,} bytes of UTF-8; MQTT allows {MAX_TOPIC_BYTES:,}"
    return None


def reply_topic_problem(topic: str) -> str | None:
    """Why a reply topic taken from a request is unacceptable, or None: it must be under margins/replies/
    (see REPLY_PREFIX), at most 512 characters, and a topic the broker accepts (`topic_problem`)."""
    if len(topic) > MAX_REPLY_TOPIC_CHARS:
        return f"reply topic is {len(topic):,} characters; the limit is {MAX_REPLY_TOPIC_CHARS}"
    if not topic.startswith(REPLY_PREFIX):
        return f"reply topic {topic[:80]!r} is not under {REPLY_PREFIX}"
    problem = topic_problem(topic)
    if problem is not None:
        return f"reply {problem}"
    return None
