"""How counts read in kas's messages: "1 process", "2 processes", never "1 process(es)"."""

from __future__ import annotations


def count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def processes(n: int) -> str:
    return count(n, "process", "processes")
