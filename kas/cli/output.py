"""The one way out to the user: every table, JSON document, line, warning and error passes through here.

The library returns warnings instead of printing them, so they reach the user once each, on stderr, in
the same shape, and never in the middle of a live view's redraw. Text that came from users or plans
(names, ids, commands) is shown with control characters escaped: a name cannot retitle or clear the
terminal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import click

# All but tab: a newline in a name could fake a table row. Also the invisible format characters that
# reorder or hide what follows (U+200B-U+200F, U+202A-U+202E bidi overrides, U+2066-U+2069, U+2028/9
# line and paragraph separators, U+FEFF).
_CONTROL = r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
COLOURS = {
    "ok": "green",
    "warn": "yellow",
    "fail": "red",
    "running": "cyan",
    "pending": "yellow",
    "starting": "yellow",
    "failed": "red",
    "timed out": "red",
    "stopped": "magenta",
    "paused": "blue",
    "lost": "red",
    "unknown": "red",
    "orphaned": "red",
}


def safe(text: object) -> str:
    """``text`` with control characters (escape sequences, newlines) shown as escapes, not obeyed."""
    shown = str(text)
    if shown.isprintable():
        return shown
    return re.sub(_CONTROL, lambda m: repr(m.group())[1:-1], shown)


class Styled(str):
    """Text kas styled itself: its escape sequences are meant, so tables leave them alone."""


def colour_for(label: str) -> str | None:
    if label.startswith("exited "):
        return "green" if label == "exited 0" else "red"
    return next((c for name, c in COLOURS.items() if label.startswith(name)), None)


class Output:
    """Where a command's output goes: text for people, JSON for scripts, and one stderr for the rest.

    A reader that goes away (``kas wave run | head -3``) is not a crash: the first failed write says so on
    stderr, sends this process SIGTERM (so a running wave stops its tasks and records them, as it would
    for a kill) and drops whatever is written after it.
    """

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.lock = threading.RLock()  # worker threads (live output) and the main thread share stdout
        self._warned: set[str] = set()
        self.closed = False

    def _write(self, text: str, err: bool = False, nl: bool = True) -> None:
        if self.closed and not err:
            return
        try:
            click.echo(text, err=err, nl=nl)
        except BrokenPipeError:
            self._reader_gone(err)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self._reader_gone(err)

    @property
    def is_terminal(self) -> bool:
        """stdout is a terminal (a live view may redraw, a table may fit its width)."""
        return _isatty(sys.stdout)

    def raw(self, data: bytes) -> None:
        """Bytes as they are (an agent's log), for a reader who wants them unchanged."""
        with self.lock:
            if self.closed:
                return
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (BrokenPipeError, ValueError):
                self._reader_gone(False)

    def _reader_gone(self, err: bool) -> None:
        if err:
            return  # stderr gone too: nobody is left to tell
        self.closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush cannot fail again
        os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            click.echo("kas: standard output was closed; stopping", err=True)
        os.kill(os.getpid(), signal.SIGTERM)

    @property
    def colour(self) -> bool:
        """Colours only for a terminal, and never with NO_COLOR set (https://no-color.org)."""
        return not self.as_json and "NO_COLOR" not in os.environ and _isatty(sys.stdout)

    def line(self, text: str = "", *, err: bool = False) -> None:
        with self.lock:
            self._write(text, err=err)

    def status(self, label: str, width: int = 0) -> str:
        """A status label, coloured on a terminal."""
        padded = f"{label:<{width}}" if width else label
        colour = colour_for(label)
        return Styled(click.style(padded, fg=colour)) if colour and self.colour else padded

    def json(self, data: Any) -> None:
        import json

        with self.lock:
            self._write(json.dumps(data, indent=2, default=str))

    def json_line(self, data: Any) -> None:
        """One JSON document on one line (event streams)."""
        import json

        with self.lock:
            self._write(json.dumps(data, default=str))

    def table(self, rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
        with self.lock:
            self._write(render_table(rows, headers))

    def warn(self, message: str) -> None:
        """One line on stderr, once per message per command; ``note:``/``warning:`` prefixes kept."""
        if message in self._warned:
            return
        self._warned.add(message)
        prefix = "" if message.startswith(("note:", "warning:")) else "warning: "
        self.line(f"kas: {prefix}{safe(message)}", err=True)

    def warn_all(self, messages: Iterable[str]) -> None:
        for message in messages:
            self.warn(message)

    def fail(self, message: str, code: int = 2) -> NoReturn:
        """``kas: error: ...`` and exit: for user errors the CLI layer itself finds."""
        self.line(f"kas: error: {message}", err=True)
        sys.exit(code)


def render_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain table: left-aligned columns two spaces apart, each at least two wider than its header.

    The layout of tabulate's "plain" format, without tabulate: it guesses each cell's type, which took
    40% of ``kas instance list`` over 1,000 rows. Text kas styled itself (a coloured status) is measured
    without its escape sequences; everything else has its control characters escaped first.
    """
    heads = [str(h) for h in headers]
    table = [[_text(c) for c in row] for row in rows]
    widths = [len(h) + 2 for h in heads]
    for row in table:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], _visible(text))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c + " " * (w - _visible(c)) for c, w in zip(cells, widths, strict=False)).rstrip()

    return "\n".join([line(heads), *(line(row) for row in table)])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, Styled):
        return cell
    return safe(cell) if isinstance(cell, str) else str(cell)


def visible_width(text: str) -> int:
    """How many columns ``text`` takes on a terminal: escape sequences kas wrote take none."""
    return len(_ANSI.sub("", text)) if "\x1b" in text else len(text)


_visible = visible_width


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
