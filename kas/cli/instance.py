"""``kas instance``: what is running, at which real priority, and stopping or forgetting it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from kas.cli.app import App
from kas.cli.complete import instance_ids
from kas.cli.options import Seconds, grace_option, json_option
from kas.cli.output import safe, visible_width
from kas.cli.selection import ALL_OPTION, find_instance, open_registry, select_instances
from kas.errors import KasError
from kas.text import processes

if TYPE_CHECKING:
    from kas.cli.output import Output
    from kas.instances import LiveView


@click.group()
def instance() -> None:
    """List, inspect, read, pause, resume, stop, adopt and prune agents."""


def age(seconds: float) -> str:
    """Compact age for tables: 42s, 7m, 3h, 2d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


LIST_COLUMNS = ("ID", "NAME", "STATUS", "PROFILE", "NI", "IO", "AG", "CPU%", "MEM", "READ/s", "WRITE/s",
                "MODE", "AGE", "COMMAND")  # fmt: skip
# What a narrow terminal gives up first; ID, NAME, STATUS, CPU% and MEM always stay.
DROP_ORDER = ("COMMAND", "MODE", "PROFILE", "AGE", "AG", "IO", "READ/s", "WRITE/s", "NI")


@instance.command("list", short_help="List agents with their live status, priority and cost.")
@click.option("--all", "show_all", is_flag=True, help="Include finished instances.")
@click.option(
    "--watch",
    type=Seconds(min=0.2, max=86400),
    is_flag=False,
    flag_value=2.0,
    metavar="[SECONDS]",
    help="Redraw every SECONDS (default 2) until Ctrl-C; in place on a terminal.",
)
@json_option("A JSON list; each object has resource_profile, live (the root process) and telemetry.")
@click.pass_obj
def list_instances(app: App, show_all: bool, watch: float | None, as_json: bool) -> None:
    """List agents with their live status, niceness (NI), I/O class (IO), autogroup nice (AG), and what
    each costs summed over its whole tree: CPU% (100 = one core), memory (MEM, resident) and disk
    reads and writes per second.

    Priorities are read from the kernel now, not from what kas stored at launch; the cost comes from
    each agent's guard, which samples its tree every second. A narrow terminal drops the less essential
    columns. With --json --watch, one JSON list per line per redraw.
    """
    out = app.output(as_json)
    if watch is None:
        _list_once(app, out, show_all)
        return
    redraw = out.is_terminal and not as_json
    try:
        while True:
            if redraw:
                out.raw(b"\x1b[H\x1b[2J")  # home, clear: the new table replaces the old one
            _list_once(app, out, show_all, json_line=as_json)
            if not redraw and not as_json:
                out.line()
            time.sleep(watch)
    except KeyboardInterrupt:
        return


def _list_once(app: App, out: Output, show_all: bool, *, json_line: bool = False) -> None:
    import shlex
    import shutil

    from kas import telemetry
    from kas.instances import listing

    registry = open_registry(app)
    try:
        views = listing(registry, show_all=show_all)
    finally:
        registry.close()
    if out.as_json:
        if json_line:
            out.json_line([v.to_json() for v in views])
        else:
            out.json([v.to_json() for v in views])
        return
    if not views:
        out.line("no instances" + ("" if show_all else " running (use --all for finished ones)"))
        return
    now = time.time()
    rows: list[tuple[object, ...]] = []
    for v in views:
        root = v.procs[0] if v.procs else None
        cost = v.telemetry or {}
        status = v.label + (f" [{safe(v.inst.task_id)}]" if v.inst.task_id else "")
        cpu = cost.get("cpu_percent")
        rows.append(
            (
                v.inst.id,
                v.inst.name,
                out.status(status),
                v.inst.resource_profile,
                root.nice if root else "-",
                root.io if root else "-",
                root.autogroup_nice if root and root.autogroup_nice is not None else "-",
                "-" if cpu is None else f"{cpu:.0f}",
                telemetry.size(cost.get("rss")),
                telemetry.size(cost.get("read_bytes_per_s")),
                telemetry.size(cost.get("write_bytes_per_s")),
                v.inst.mode,
                age(now - (v.inst.started_at or v.inst.created_at)),
                short(shlex.join(v.inst.argv)),
            )
        )
    width = shutil.get_terminal_size().columns if out.is_terminal else None
    out.table(*fit(rows, LIST_COLUMNS, DROP_ORDER, width))


def fit(
    rows: list[tuple[object, ...]], headers: tuple[str, ...], drop: tuple[str, ...], width: int | None
) -> tuple[list[tuple[object, ...]], tuple[str, ...]]:
    """Leave out columns in ``drop`` order until the table fits ``width`` (None: keep every column)."""
    keep = list(range(len(headers)))

    def needed() -> int:  # as render_table lays it out: two wider than a header, two spaces apart
        widths = [max(len(headers[i]) + 2, *(visible_width(str(r[i])) for r in rows)) for i in keep]
        return sum(widths) + 2 * (len(widths) - 1)

    for name in drop:
        if width is None or needed() <= width:
            break
        keep.remove(headers.index(name))
    return [tuple(r[i] for i in keep) for r in rows], tuple(headers[i] for i in keep)


@instance.command("show", short_help="Show one instance and its live priority.")
@click.argument("inst_id", metavar="ID", shell_complete=instance_ids)
@json_option()
@click.pass_obj
def show(app: App, inst_id: str, as_json: bool) -> None:
    """Every stored field of one instance, plus the live priority of its process tree."""
    import shlex

    from kas import telemetry
    from kas.cli.profile import shown
    from kas.instances import showing

    out = app.output(as_json)
    registry = open_registry(app)
    try:
        view = showing(registry, find_instance(registry, inst_id))
    finally:
        registry.close()
    if as_json:
        out.json(view.to_json())
        return
    inst = view.inst
    rows: list[tuple[str, object]] = [("id", inst.id), ("name", inst.name), ("status", view.label)]
    if inst.resource_profile != "normal":
        rows.append(("profile", inst.resource_profile))
    if inst.applied_at:
        switch = f"{inst.applied_from} -> {inst.resource_profile}"
        rows.append(("profile applied", f"{_when(inst.applied_at)} ({switch}, kas profile apply)"))
    rows += [
        ("mode", inst.mode),
        ("pid", inst.pid or "-"),
        ("tmux", f"{inst.tmux_target} (socket {inst.tmux_socket or 'default'})" if inst.tmux_target else "-"),
        ("cwd", inst.cwd),
        ("command", shlex.join(inst.argv)),
        ("launched as", shlex.join(inst.wrapped_argv)),
        ("started", _when(inst.started_at)),
        ("ended", _when(inst.ended_at)),
        ("log", inst.log_path or "-"),
    ]
    if inst.wave_run:
        rows.append(("wave", f"{inst.wave_run} wave {inst.wave_index} task {inst.task_id}"))
    cost = view.telemetry
    if cost:
        cpu, procs = cost.get("cpu_percent"), cost.get("num_procs")
        rows.append(
            (
                "cost (whole tree)",
                f"CPU {'-' if cpu is None else f'{cpu:.0f}%'}, memory {telemetry.size(cost.get('rss'))}, "
                f"read {telemetry.size(cost.get('read_bytes'))} "
                f"({telemetry.size(cost.get('read_bytes_per_s'))}/s), "
                f"written {telemetry.size(cost.get('write_bytes'))} "
                f"({telemetry.size(cost.get('write_bytes_per_s'))}/s), "
                f"{processes(procs) if isinstance(procs, int) else '- processes'}",
            )
        )
    rows += [(f"setting {k}", shown(v)) for k, v in inst.settings.items()]
    rows += [(f"env {k}", v) for k, v in inst.env.items()]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.line(f"{safe(key):<{width}}  {safe(value)}")
    if view.procs:
        each = (cost or {}).get("procs") or {}
        out.line("\nlive process tree:")
        out.table(
            (
                (
                    p.pid,
                    "-" if p.ppid is None else p.ppid,
                    p.name,
                    p.nice,
                    p.io,
                    "-" if p.autogroup_nice is None else p.autogroup_nice,
                    "-" if p.oom_score_adj is None else p.oom_score_adj,
                    _cpu(each.get(str(p.pid))),
                    telemetry.size((each.get(str(p.pid)) or {}).get("rss")),
                    ", ".join(p.marks + p.problems + p.notes) or "-",
                )
                for p in view.procs
            ),
            ("PID", "PPID", "NAME", "NI", "IO", "AG", "OOM", "CPU%", "MEM", "NOTES"),
        )


def _cpu(figures: dict[str, float | None] | None) -> str:
    cpu = (figures or {}).get("cpu_percent")
    return "-" if cpu is None else f"{cpu:.0f}"


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


@instance.command("logs", short_help="Print an agent's or a wave task's output.")
@click.argument("inst_id", metavar="ID", shell_complete=instance_ids)
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the agent writes, until it ends.")
@click.option("-n", "--lines", type=click.IntRange(0, 10_000_000), help="Only the last N lines.")
@click.pass_obj
def logs(app: App, inst_id: str, follow: bool, lines: int | None) -> None:
    """Print the output of a detached agent, a tmux agent or a wave task.

    With --follow on a running agent, the output is printed as it comes until the agent ends (or
    Ctrl-C); `tail -f` watches the file, so kas polls nothing.
    """
    from pathlib import Path

    from kas.instances import refresh, wait_for_end
    from kas.logs import LogFollower, tail_from_line
    from kas.status import ACTIVE

    registry = open_registry(app)
    try:
        inst = refresh(registry, find_instance(registry, inst_id), probe_tree=False).inst
    finally:
        registry.close()
    if inst.status == "pending":
        raise KasError(f"instance {inst.id} is a pending wave task: it has no output until it starts")
    if not inst.log_path:
        raise KasError(f"instance {inst.id} has no log: it ran in the foreground and wrote to the terminal")
    path = Path(inst.log_path)
    if not path.is_file():
        raise KasError(f"{path}: the log of instance {inst.id} is gone (`kas instance prune` removes logs)")
    follower = LogFollower(
        path, app.out.raw, tail_from_line(path, lines), live=follow and inst.status in ACTIVE
    )
    try:
        if follower.live:
            wait_for_end(inst)
    finally:
        follower.stop()


def _report(out: Output, views: list[LiveView]) -> None:
    if out.as_json:
        out.json([{"id": v.inst.id, "status": v.status, "exit_status": v.inst.exit_status} for v in views])
        return
    for view in views:
        out.line(f"{view.inst.id}  {out.status(view.label)}")


@instance.command("stop", short_help="Stop agents: SIGTERM, then SIGKILL.")
@click.argument("inst_ids", nargs=-1, metavar="ID...|--all", shell_complete=instance_ids)
@ALL_OPTION
@grace_option()
@click.option(
    "--keep-daemons",
    is_flag=True,
    help="Stop only the agent's own process group; leave what it started outside it (a build server, "
    "a gpg-agent) running, no longer guarded.",
)
@json_option("A JSON list of the stopped instances.")
@click.pass_obj
def stop(
    app: App, inst_ids: tuple[str, ...], every: bool, grace: float, keep_daemons: bool, as_json: bool
) -> None:
    """Stop agents and everything they started: SIGTERM to the whole tree (escaped sessions and daemons
    included), SIGKILL after --grace seconds (what the agent left gets 2 s more after it ended).

    A pending wave task is marked cancelled. Stopping a finished instance only reports how it ended.
    """
    from kas.instances import stop as stop_instance

    out = app.output(as_json)
    registry = open_registry(app)
    try:
        chosen = select_instances(registry, inst_ids, every)
        views = [stop_instance(registry, inst, grace, keep_daemons=keep_daemons) for inst in chosen]
    finally:
        registry.close()
    _report(out, views)


@instance.command("pause", short_help="Freeze agents' whole trees (SIGSTOP).")
@click.argument("inst_ids", nargs=-1, metavar="ID...|--all", shell_complete=instance_ids)
@ALL_OPTION
@json_option("A JSON list of the instances and their status now.")
@click.pass_obj
def pause_cmd(app: App, inst_ids: tuple[str, ...], every: bool, as_json: bool) -> None:
    """Freeze agents and everything they started (SIGSTOP to their whole trees), for a match or a call.

    They hold their memory but take no CPU until `kas instance resume`. Fits Feral GameMode's
    [custom] start= / end= hooks: `kas instance pause --all` / `kas instance resume --all`.
    """
    _pause(app, inst_ids, every, as_json, resume=False)


@instance.command("resume", short_help="Thaw paused agents' whole trees (SIGCONT).")
@click.argument("inst_ids", nargs=-1, metavar="ID...|--all", shell_complete=instance_ids)
@ALL_OPTION
@json_option("A JSON list of the instances and their status now.")
@click.pass_obj
def resume_cmd(app: App, inst_ids: tuple[str, ...], every: bool, as_json: bool) -> None:
    """Let paused agents run on where they stopped (SIGCONT to their whole trees)."""
    _pause(app, inst_ids, every, as_json, resume=True)


def _pause(app: App, inst_ids: tuple[str, ...], every: bool, as_json: bool, *, resume: bool) -> None:
    from kas.instances import pause

    out = app.output(as_json)
    registry = open_registry(app)
    try:
        views = [pause(registry, inst, resume=resume) for inst in select_instances(registry, inst_ids, every)]
    finally:
        registry.close()
    _report(out, views)


@instance.command("adopt", short_help="Take an agent started without kas under its control.")
@click.argument("pid", type=click.IntRange(min=1))
@click.option("--name", help="A name for the list (default: the process's name).")
@json_option("The new instance row, with what changed and what kas cannot guarantee.")
@click.pass_obj
def adopt_cmd(app: App, pid: int, name: str | None, as_json: bool) -> None:
    """Register a running agent that kas did not start, put the configured profile on its whole tree
    now, and guard it from then on (new sessions lowered, raised priorities put back, stopped whole by
    `kas instance stop`).

    kas is not its parent, so the guard follows its tree through /proc: a daemon that double-forks
    between two looks (0.5 s) can still leave, and its exit status cannot be seen.
    """
    from kas.adopt import adopt

    out = app.output(as_json)
    resolved = app.resolve(quiet=as_json)
    registry = open_registry(app)
    try:
        done = adopt(registry, pid, name, resolved)
    finally:
        registry.close()
    if as_json:
        out.json({**done.inst.to_json(), "changed": done.changed, "kept": done.kept, "limits": done.limits})
        return
    what = ", ".join(done.changed) or "nothing to change"
    out.line(f"{done.inst.id}  adopted pid {pid} ({safe(done.inst.name)}), profile {resolved.name}: {what}")
    for note in done.kept:
        out.line(f"    {note}")
    out.warn(done.limits)


@instance.command("prune", short_help="Forget finished instances and delete their logs.")
@click.option(
    "--older-than",
    type=Seconds(min=0),
    metavar="HOURS",
    help="Only rows that ended more than this many hours ago.",
)
@click.option("--keep-logs", is_flag=True, help="Keep the pruned instances' log files.")
@json_option('Print {"pruned": N, "files_removed": M}.')
@click.pass_obj
def prune(app: App, older_than: float | None, keep_logs: bool, as_json: bool) -> None:
    """Forget finished instances (exited, failed, cancelled, stopped, timed out, lost) and delete their logs.

    The registry and the state directory stay small. Tasks of a wave that is still running are kept.
    A wave run whose tasks are pruned can no longer be resumed (kas wave run --resume).
    """
    from kas.instances import prune as prune_finished

    out = app.output(as_json)
    registry = open_registry(app)
    try:
        count, files = prune_finished(registry, older_than, keep_logs=keep_logs)
    finally:
        registry.close()
    if as_json:
        out.json({"pruned": count, "files_removed": files})
    else:
        out.line(f"pruned {count} finished instance(s), removed {files} file(s)")
