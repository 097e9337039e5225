"""Regenerate the committed shell completions and man pages from the Click app.

    python scripts/gen_docs.py           write completions/ and man/
    python scripts/gen_docs.py --check   exit 1 (naming the files) if what is committed is stale

Completions come from kas's completion classes (kas.cli.shells); man pages from click-man, fed every
lazily loaded subcommand, plus the sections click-man cannot know (ENVIRONMENT, FILES, the plan file
format), written here in roff. A fixed date keeps the pages reproducible (bump it with the version).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
MAN_DATE = "2026-11-26"


# What kas reads from the environment (grep os.environ / envvar= in kas/), in roff.
ENVIRONMENT = {
    "KASMOS_CONFIG": (
        "The config file to use instead of the nearest\n.IR .kasmos/config.toml ;\n"
        r"the same as \fB\-\-config\fP, which wins over it. A file named this way may belong to anyone, "
        "but is refused if anyone could have changed it (world-writable, or in a world-writable "
        "directory without the sticky bit)."
    ),
    "KAS_STATE_DIR": (
        "The state directory (see FILES). It must be yours and writable only by you: kas creates it "
        "mode 0700, and refuses one someone else owns or can write."
    ),
    "XDG_STATE_HOME": (
        r"Without \fBKAS_STATE_DIR\fP, the state directory is \fI$XDG_STATE_HOME/kas\fP; without both, "
        r"\fI~/.local/state/kas\fP."
    ),
    "KAS_TMUX_SOCKET": (
        r"The tmux socket name (\fBtmux \-L\fP) of the server tmux-mode agents run on, instead of the "
        r"default server; the same as \fB\-\-tmux\-socket\fP, which wins over it."
    ),
    "KAS_TMUX_SESSION": (
        "The tmux session that holds the agents' windows (default: kas); the same as "
        r"\fB\-\-tmux\-session\fP, which wins over it."
    ),
    "KAS_DB_BUSY_TIMEOUT": (
        r"Seconds to wait for another process's lock on \fIinstances.db\fP before giving up with "
        "exit status 1 (default: 30; 0 = do not wait). Anything but a number of seconds is an error."
    ),
    "KAS_LOG_MAX": (
        r"The most an agent's log may hold, in bytes or with a K, M or G suffix (default: 64M; 0 = no "
        r"limit). A log that would grow past it is renamed \fINAME\fP.1 (replacing an older one) and a "
        "new one starts, so an agent that prints forever cannot fill the disk."
    ),
    "KAS_TMUX_KEEP_WINDOWS": (
        "With 0, a tmux agent's window closes once its exit status is recorded. By default it stays, "
        r"so its last screen can be read; \fBkas instance prune\fP removes it."
    ),
    "NO_COLOR": (
        "When set, to any value, kas prints no colours. Without it, colours are used only on a "
        r"terminal, and never with \fB\-\-json\fP."
    ),
    "TERM": (
        r"With \fBTERM=dumb\fP, \fBkas wave run\fP prints one line per event instead of redrawing its "
        "task lines in place."
    ),
}

# Where kas reads and writes, in roff; the state directory is shown at its default place.
STATE = "~/.local/state/kas"
FILES = {
    ".kasmos/config.toml": (
        "The config. kas looks for it in the current directory, then in each parent in turn (as git "
        "finds .git); the nearest wins. A file found this way is used only if it and its .kasmos "
        r"directory belong to you (or root) and nobody else can write them. \fB\-\-config\fP or "
        r"\fB$KASMOS_CONFIG\fP name another file; no file means the normal profile."
    ),
    f"{STATE}/": (
        r"The state directory: \fB$KAS_STATE_DIR\fP, else \fB$XDG_STATE_HOME\fP/kas, else this. "
        "Mode 0700: agents' output may hold secrets."
    ),
    f"{STATE}/instances.db": (
        r"The SQLite registry of every agent and wave task kas started, which \fBkas instance\fP lists, "
        "shows, stops and prunes; mode 0600. kas never rewrites, moves or deletes one that is "
        "read-only, damaged or not kas's: it names it and asks you to move it aside."
    ),
    f"{STATE}/logs/": (
        r"Output of detached and tmux agents (\fIID\fP.log) and of wave tasks "
        r"(run\-\fIRUN\fP/\fITASK\fP.log), each file mode 0600 and bounded by \fB$KAS_LOG_MAX\fP (an older "
        r"part is \fINAME\fP.1); a run's run.json records what \fBkas wave run \-\-resume\fP needs. "
        r"\fBkas instance prune\fP deletes those of the rows it forgets (unless \fB\-\-keep\-logs\fP)."
    ),
    f"{STATE}/status/": (
        "tmux agents' launch specs and exit statuses, written for kas by the small runner in each "
        "agent's tmux pane."
    ),
    f"{STATE}/serve-token": (
        r"The token of \fBkas serve\fP (mode 0600), made once; \fBkas serve \-\-print\-token\fP prints it."
    ),
    f"{STATE}/guards/": (
        r"Each running agent's guard: the rules it keeps on the agent's tree (\fIID\fP.json, rewritten by "
        r"\fBkas profile apply\fP) and the figures of what the tree costs (\fIID\fP.stats.json, which "
        r"\fBkas instance list\fP reads); mode 0600, removed when the agent ends."
    ),
}

# Which of the above each page describes: kas(1) all of them, a subcommand what it uses.
STATE_VARS = ["KAS_STATE_DIR", "XDG_STATE_HOME", "KAS_DB_BUSY_TIMEOUT", "KAS_LOG_MAX"]
STATE_FILES = [f"{STATE}/", f"{STATE}/instances.db", f"{STATE}/logs/"]
TMUX_VARS = ["KAS_TMUX_SOCKET", "KAS_TMUX_SESSION", "KAS_TMUX_KEEP_WINDOWS"]
CONFIG = ".kasmos/config.toml"
GUARDS = f"{STATE}/guards/"
PAGE_SECTIONS: dict[str, tuple[list[str], list[str]]] = {
    "kas.1": (list(ENVIRONMENT), list(FILES)),
    "kas-spawn.1": (["KASMOS_CONFIG", *STATE_VARS, *TMUX_VARS], [CONFIG, *STATE_FILES, f"{STATE}/status/"]),
    "kas-wave-run.1": (
        ["KASMOS_CONFIG", *STATE_VARS, *TMUX_VARS, "TERM"],
        [CONFIG, *STATE_FILES, f"{STATE}/status/"],
    ),
    "kas-profile-show.1": (["KASMOS_CONFIG"], [CONFIG]),
    "kas-check.1": (["KASMOS_CONFIG", *STATE_VARS], [CONFIG, *STATE_FILES, GUARDS]),
    "kas-bench-responsiveness.1": (["KASMOS_CONFIG", "KAS_TMUX_SOCKET"], [CONFIG]),
    "kas-bench-disk.1": (["KASMOS_CONFIG", "KAS_TMUX_SOCKET"], [CONFIG]),
    "kas-serve.1": (["KASMOS_CONFIG", *STATE_VARS], [CONFIG, *STATE_FILES, GUARDS, f"{STATE}/serve-token"]),
    "kas-profile-apply.1": (["KASMOS_CONFIG", *STATE_VARS], [CONFIG, *STATE_FILES, GUARDS]),
    "kas-instance-adopt.1": (["KASMOS_CONFIG", *STATE_VARS], [CONFIG, *STATE_FILES, GUARDS]),
    **{
        f"kas-instance-{name}.1": (STATE_VARS, [*STATE_FILES, GUARDS])
        for name in ("list", "show", "logs", "stop", "prune", "pause", "resume")
    },
}

# README's "Plan files", in roff, for kas-wave-run(1).
PLAN_FILES = r""".SH PLAN FILES
A plan is a TOML file. Its waves run one after another; the tasks of a wave run side by side, at
most \fBmax_parallel_wave_tasks\fP at once.
.PP
.RS 4
.nf
name = "auth-refactor"
[defaults]                      # optional: cwd (relative to the plan file), env, mode, timeout
cwd = "."
env = { RUST_LOG = "info" }
[resources]                     # optional: same keys as the config's [resources], for this plan
max_parallel_wave_tasks = 2
[[waves]]
name = "scaffold"               # optional
[[waves.tasks]]
id = "api"                      # unique; letters, digits . _ - (first a letter or digit); at most 64
command = ["cargo", "build", "\-p", "api"]
[[waves.tasks]]
id = "db"
command = "make migrate"        # a string is split like a shell would (no shell runs it)
cwd = "services/db"
env = { PGHOST = "localhost" }
timeout = 600                   # seconds; beats [defaults] timeout; 0 = none
[[waves]]
[[waves.tasks]]
id = "review"
command = ["./scripts/review.sh"]
.fi
.RE
.TP
.B name
The plan's name (default: the file's name without .toml).
.TP
.B [defaults]
Optional: \fBcwd\fP (relative to the plan file's directory), \fBenv\fP, \fBmode\fP (sdk or tmux) and
\fBtimeout\fP, for every task that does not set its own.
.TP
.B [resources]
Optional: the keys of the config's [resources], for this plan only.
.TP
.B [[waves]]
One wave, in order: an optional \fBname\fP and at least one task.
.TP
.B [[waves.tasks]]
One task of the wave above it. \fBid\fP: unique in the plan; letters, digits, ".", "_" and "\-", the
first a letter or digit; at most 64 characters (it names the task's log file). \fBcommand\fP: a list
of arguments, or a string split as a shell would split it (no shell runs it). Optional: \fBname\fP;
\fBcwd\fP (relative to the [defaults] cwd); \fBenv\fP (added to the [defaults] env); \fBtimeout\fP.
.TP
.B timeout
A task's limit in seconds: a positive number up to 7 days (604800). A task's own value beats
[defaults]; 0 or no value means no limit.
.PP
Settings come from the config's [resources], then the plan's [resources], then
\fB\-\-set\fP \fIKEY\fP=\fIVALUE\fP (repeatable). Every plan error (syntax, a value of the wrong type,
a duplicate or malformed id, an empty wave, an unknown key, a missing command, a bad cwd or timeout)
is reported with its line before anything starts.
.PP
A failing task does not stop its wave (\fB\-\-fail\-fast\fP does). Ctrl-C or SIGTERM stops every
running task's process group (SIGTERM, then SIGKILL after \fB\-\-grace\fP seconds), marks pending
tasks cancelled, and exits 130.
"""


def extra_sections(page: str) -> str:
    """The roff click-man cannot generate for ``page``: plan format, ENVIRONMENT, FILES, SEE ALSO."""
    parts = [PLAN_FILES] if page == "kas-wave-run.1" else []
    env, files = PAGE_SECTIONS.get(page, ([], []))
    if env:
        parts.append(".SH ENVIRONMENT\n" + "".join(f".TP\n.B {n}\n{ENVIRONMENT[n]}\n" for n in env))
    if files:
        parts.append(".SH FILES\n" + "".join(f".TP\n.I {f}\n{FILES[f]}\n" for f in files))
    if page != "kas.1":
        parts.append(".SH SEE ALSO\n.BR kas (1),\nfor every environment variable and file kas uses.\n")
    return "".join(parts)


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
            files[f"man/{page.name}"] = text + "\n" + extra_sections(page.name)
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
