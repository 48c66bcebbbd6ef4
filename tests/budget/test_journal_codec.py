"""A partition's journal on the wire, without a server: batches cut into messages and read back, the
change-of-owner mark, the subjects a partitioned enforcer reads and answers on, and its bad flags."""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from budget.domain.events import encode_event
from budget.jetstream.journal_codec import (
    EVENTS_HEADER,
    EXPECTED_LAST_HEADER,
    FIRST_SEQ_HEADER,
    LEASE_TAKEN_HEADER,
    MSG_ID_HEADER,
    chunks,
    lease_taken,
    read_entry,
)
from budget.jetstream.partitions import subject_of_topic, topic_of_subject
from sim.cli import main as margins
from tests.budget.enforcer_process import CAPS_TOML
from tests.budget.store_helpers import usage_events


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3), min_size=0, max_size=60),
    first_seq=st.integers(min_value=0, max_value=10**9),
    max_body=st.integers(min_value=200, max_value=5_000),
)
def test_a_batch_cut_into_messages_reads_back_whole_and_in_order(
    sizes: list[int], first_seq: int, max_body: int
) -> None:
    events = [
        msgspec.structs.replace(event, feature="f" * (40 * size))
        for event, size in zip(usage_events(len(sizes), users=7), sizes, strict=True)
    ]
    cut = chunks([encode_event(e) for e in events], first_seq, max_body)
    assert all(len(chunk.body) <= max_body or chunk.count == 1 for chunk in cut)
    seq, read = first_seq, []
    for chunk in cut:
        assert chunk.first_seq == seq  # consecutive: no gap, no overlap
        entry = read_entry(chunk.headers(expected_last=5, msg_id="m"), chunk.body)
        read += entry.events(seq)
        seq = entry.end_seq
    assert read == events


def test_reading_from_the_middle_of_a_message_skips_what_the_store_has() -> None:
    events = usage_events(5)
    (chunk,) = chunks([encode_event(e) for e in events], 10)
    entry = read_entry(chunk.headers(0, "m"), chunk.body)
    assert entry.events(13) == events[3:]
    assert entry.events(0) == events


def test_the_headers_fence_and_deduplicate_the_append() -> None:
    (chunk,) = chunks([encode_event(e) for e in usage_events(1)], 7)
    headers = chunk.headers(expected_last=41, msg_id="p0:alpha:3:7:1")
    assert headers[EXPECTED_LAST_HEADER] == "41"
    assert headers[MSG_ID_HEADER] == "p0:alpha:3:7:1"
    assert (headers[FIRST_SEQ_HEADER], headers[EVENTS_HEADER]) == ("7", "1")
    assert LEASE_TAKEN_HEADER not in headers


def test_a_lease_taken_mark_holds_no_events_and_names_its_owner() -> None:
    mark = lease_taken("beta", 12, next_seq=300)
    headers = mark.headers(expected_last=9, msg_id="m")
    assert headers[LEASE_TAKEN_HEADER] == "beta 12"
    entry = read_entry(headers, mark.body)
    assert (entry.first_seq, entry.end_seq, entry.events(0)) == (300, 300, [])


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        (None, FIRST_SEQ_HEADER),
        ({FIRST_SEQ_HEADER: "1"}, EVENTS_HEADER),
        ({FIRST_SEQ_HEADER: "x", EVENTS_HEADER: "1"}, "not a number"),
    ],
)
def test_a_message_margins_did_not_write_is_named(headers: dict[str, str] | None, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        read_entry(headers, b"{}")


def test_a_message_whose_count_disagrees_with_its_lines_is_refused() -> None:
    (chunk,) = chunks([encode_event(e) for e in usage_events(2)], 0)
    entry = read_entry({FIRST_SEQ_HEADER: "0", EVENTS_HEADER: "3"}, chunk.body)
    with pytest.raises(ValueError, match="holds 3 events and holds 2"):
        entry.events(0)


@pytest.mark.parametrize(
    ("subject", "topic"),
    [
        ("margins.part.3.usage.u42", "margins/usage/u42"),
        ("margins.part.0.authorize.alice", "margins/authorize/alice"),
        ("margins.part.12.renew.bob", "margins/renew/bob"),
        ("margins.part.1.admin.carol", "margins/admin/users/carol"),
        ("margins.part.x.usage.u1", None),
        ("margins.part.1.journal", None),
        ("margins.part.1.status.u1", None),
        ("margins.usage.u1", None),
    ],
)
def test_a_partitioned_subject_is_read_as_the_topic_it_stands_for(subject: str, topic: str | None) -> None:
    assert topic_of_subject(subject) == topic


def test_answers_go_to_the_subject_an_mqtt_subscriber_of_the_topic_receives() -> None:
    assert subject_of_topic("margins/replies/r1") == "margins.replies.r1"
    assert subject_of_topic("margins/status/u42") == "margins.status.u42"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--nats", "nats://127.0.0.1:1", "--broker", "mqtt://127.0.0.1:1"], "either --broker"),
        ([], "either --broker"),
        (["--nats", "http://127.0.0.1:1", "--partitions", "4"], "--nats: url"),
        (["--nats", "nats://127.0.0.1:1"], "--partitions"),
        (["--nats", "nats://127.0.0.1:1", "--partitions", "0"], "--partitions"),
        (["--nats", "nats://127.0.0.1:1", "--partitions", "4", "--http", "127.0.0.1:web"], "127.0.0.1:web"),
    ],
)
def test_bad_cluster_flags_exit_2_with_one_line(tmp_path: Path, flags: list[str], named: str) -> None:
    caps = tmp_path / "caps.toml"
    caps.write_text(CAPS_TOML)
    args = ["enforce", "--store", str(tmp_path / "s"), "--config", str(caps), *flags]
    result = CliRunner().invoke(margins, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error:") and named in last


def test_a_partitioned_enforcer_whose_http_port_is_taken_exits_2_naming_it(tmp_path: Path) -> None:
    caps = tmp_path / "caps.toml"
    caps.write_text(CAPS_TOML)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = ["enforce", "--store", str(tmp_path / "s"), "--config", str(caps)]
        args += ["--nats", "nats://127.0.0.1:1", "--partitions", "4", "--http", address]
        result = CliRunner().invoke(margins, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert address in result.output.strip().splitlines()[-1]
