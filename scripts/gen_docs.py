"""Regenerate the committed shell completions and man pages from the Click app.

    python scripts/gen_docs.py           write completions/ and man/
    python scripts/gen_docs.py --check   exit 1 (naming the files) if what is committed is stale

Completions come from Click's own completion classes; man pages from click-man, fed every lazily
loaded subcommand. A fixed date keeps the pages reproducible (bump it with the version).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
MAN_DATE = "2026-11-26"


def load_all(group: click.Group, ctx: click.Context) -> None:
    """Import every lazy subcommand so click-man sees the whole tree."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            load_all(command, click.Context(command, info_name=name, parent=ctx))


def render() -> dict[str, str]:
    """Every generated file, by its path relative to the repository."""
    from click_man.core import write_man_pages

    from kas import __version__
    from kas.cli import main
    from kas.cli.completion import SHELLS, completion_script

    load_all(main, click.Context(main, info_name="kas"))
    files = {f"completions/kas.{shell}": completion_script(shell) for shell in SHELLS}
    with tempfile.TemporaryDirectory() as tmp:
        write_man_pages("kas", main, version=__version__, target_dir=tmp, date=MAN_DATE)
        for page in sorted(Path(tmp).iterdir()):
            # Click's "\b" (keep this paragraph as is) marker means nothing to roff: drop it.
            text = "\n".join(line for line in page.read_text().splitlines() if line.strip() != "\b")
            files[f"man/{page.name}"] = text + "\n"
    return files


def main() -> int:
    check = "--check" in sys.argv[1:]
    files = render()
    stale = [
        path
        for path, text in files.items()
        if not (ROOT / path).is_file() or (ROOT / path).read_text() != text
    ]
    known = {f"man/{p.name}" for p in (ROOT / "man").glob("*.1")} if (ROOT / "man").is_dir() else set()
    extra = sorted(known - set(files))
    if check:
        if stale or extra:
            print("stale generated files (run python scripts/gen_docs.py):", *stale, *extra, file=sys.stderr)
            return 1
        return 0
    for path, text in files.items():
        target = ROOT / path
        target.parent.mkdir(exist_ok=True)
        target.write_text(text)
    for path in extra:
        (ROOT / path).unlink()
    print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
