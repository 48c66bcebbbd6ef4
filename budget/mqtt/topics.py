"""margins' MQTT topics: where applications publish usage and authorizations, where admins set caps,
and where the enforcer answers, keeps status and raises alerts -- and which reply topics are safe."""

from __future__ import annotations

USAGE_PREFIX = "margins/usage/"
AUTHORIZE_PREFIX = "margins/authorize/"
RENEW_PREFIX = "margins/renew/"
ADMIN_PREFIX = "margins/admin/users/"
# Replies may go only here or outside margins/: the enforcer may publish status, so a reply topic naming
# margins/status/<victim> would let any application forge another user's status.
REPLY_PREFIX = "margins/replies/"
STATUS_PREFIX = "margins/status/"
ALERT_PREFIX = "margins/alerts/"


def status_topic(user_id: str) -> str:
    """Where a user's retained status is published."""
    return f"{STATUS_PREFIX}{user_id}"


def alert_topic(user_id: str) -> str:
    """Where a user's alerts are published."""
    return f"{ALERT_PREFIX}{user_id}"


def reply_topic_problem(topic: str) -> str | None:
    """Why a reply topic is unacceptable, or None: no wildcards, no $-topics, nothing under margins/
    except margins/replies/ (the enforcer's own topics must not be writable through a reply)."""
    if not topic or len(topic) > 512:
        return "reply topic must be 1 to 512 characters"
    if "+" in topic or "#" in topic or "\x00" in topic or topic.startswith("$"):
        return f"reply topic {topic!r} contains a wildcard, a NUL or starts with $"
    if topic.startswith("margins/") and not topic.startswith(REPLY_PREFIX):
        return f"reply topic {topic!r} must be under {REPLY_PREFIX} or outside margins/"
    return None
