"""budget.mqtt.topics: which topics the enforcer may publish to, against a classification of every code
point built here from unicodedata and the Unicode definition of non-characters (not from the module)."""

from __future__ import annotations

import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from budget.mqtt.topics import reply_topic_problem, topic_problem


def is_noncharacter(code_point: int) -> bool:
    """Unicode 15, section 23.7: U+FDD0..U+FDEF and the last two code points of each of the 17 planes."""
    return 0xFDD0 <= code_point <= 0xFDEF or code_point % 0x10000 in (0xFFFE, 0xFFFF)


def forbidden(char: str) -> bool:
    """What a broker may refuse in a topic name: controls (category Cc: U+0000-U+001F, U+007F-U+009F),
    surrogates (Cs: never valid UTF-8), non-characters, and the wildcards."""
    return unicodedata.category(char) in ("Cc", "Cs") or is_noncharacter(ord(char)) or char in "+#"


def acceptable(topic: str) -> bool:
    """A topic name a broker takes: not empty, not a $-topic, no forbidden code point, <= 65,535 bytes."""
    if not topic or topic.startswith("$") or any(forbidden(c) for c in topic):
        return False
    return len(topic.encode("utf-8")) <= 65_535


# every code point, surrogates included, with the edges of each class drawn often
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
edges = st.sampled_from(
    [chr(c) for c in (0x0, 0x1F, 0x20, 0x7E, 0x7F, 0x9F, 0xA0, 0xD7FF, 0xD800, 0xDFFF, 0xE000, 0xFDCF)]
    + [chr(c) for c in (0xFDD0, 0xFDEF, 0xFDF0, 0xFFFD, 0xFFFE, 0xFFFF, 0x1FFFD, 0x1FFFE, 0x10FFFF)]
    + ["+", "#", "$", "/", "\t", "\n", "\x85", "\u2028"]
)
chars = st.one_of(any_char, edges)


@settings(max_examples=2000)
@given(chars)
@example("\t")
@example("\x85")
@example("\ufffe")
@example("\U0010ffff")
def test_one_code_point_in_a_topic(char: str) -> None:
    topic = f"margins/replies/app/{char}"
    assert (topic_problem(topic) is None) == (not forbidden(char)), f"U+{ord(char):04X}"


@settings(max_examples=1000)
@given(st.text(chars, max_size=40))
def test_any_text_as_a_topic(topic: str) -> None:
    assert (topic_problem(topic) is None) == acceptable(topic)
    problem = reply_topic_problem(topic)
    if problem is None:  # a safe reply topic is a valid topic under margins/replies/
        assert acceptable(topic) and topic.startswith("margins/replies/")
    under = f"margins/replies/{topic}"
    assert (reply_topic_problem(under) is None) == (acceptable(under) and len(under) <= 512)


def test_every_code_point_is_classified_alike() -> None:
    disagree = [
        f"U+{code_point:04X}"
        for code_point in range(0x110000)
        if (topic_problem(f"a{chr(code_point)}") is None) == forbidden(chr(code_point))
    ]
    assert disagree == []


def test_the_length_limit_is_in_bytes_of_utf8() -> None:
    assert topic_problem("é" * 32_767 + "a") is None  # 65,535 bytes
    assert topic_problem("é" * 32_768) == "topic is 65,536 bytes of UTF-8; MQTT allows 65,535"
    assert topic_problem("a" * 65_536) is not None
    assert reply_topic_problem("margins/replies/" + "a" * 496) is None  # 512 characters
    assert reply_topic_problem("margins/replies/" + "a" * 497) is not None


def test_reply_topics() -> None:
    assert reply_topic_problem("margins/replies/app/1") is None
    for bad in ("margins/status/bob", "margins/admin/users/bob", "myapp/replies/1", "margins/replies/+/1"):
        assert reply_topic_problem(bad) is not None
    for bad in ("margins/replies/#", "$SYS/x", "", "margins/replies", "Margins/replies/a"):
        assert reply_topic_problem(bad) is not None
    problem = reply_topic_problem("margins/replies/a\tb")
    assert problem is not None and "U+0009" in problem
