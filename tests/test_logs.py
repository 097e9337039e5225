"""Showing a log as it grows: the line offsets and the tail-based follower, with real files and tail."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kas.logs import LogFollower, tail_from_line


@pytest.mark.parametrize(
    ("text", "lines", "expected"),
    [
        (b"a\nb\nc\n", None, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc\n", 9, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"a\nb\npartial", 1, b"partial"),
        (b"", 3, b""),
    ],
)
def test_tail_from_line_finds_where_the_last_lines_start(
    tmp_path: Path, text: bytes, lines: int | None, expected: bytes
) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(text)
    assert text[tail_from_line(log, lines) :] == expected


def test_a_live_follower_shows_lines_as_they_are_written_and_the_rest_on_stop(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"old\n")
    seen: list[bytes] = []
    arrived = threading.Event()

    def emit(raw: bytes) -> None:
        seen.append(raw)
        arrived.set()

    follower = LogFollower(log, emit, offset=4)  # from after "old"
    assert follower.live
    with log.open("ab") as out:
        out.write(b"one\n")
        out.flush()
        assert arrived.wait(10), "tail did not pass on a line written while following"
        out.write(b"two\n")
    follower.stop()  # "two" may or may not have come through tail; it is shown exactly once either way
    assert b"".join(seen) == b"one\ntwo\n"


def test_a_follower_that_is_not_live_prints_the_file_once(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"x\ny\n")
    seen: list[bytes] = []
    follower = LogFollower(log, seen.append, offset=2, live=False)
    assert not follower.live
    follower.stop()
    assert seen == [b"y\n"]
