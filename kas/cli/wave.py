"""``kas wave run``: run a plan's waves with the profile's cap, a live view, and a summary."""

from __future__ import annotations

import json
import os
import select
import sys
import threading
from pathlib import Path
from typing import Any

import click

from kas.cli.app import App
from kas.cli.complete import plan_files, set_keys
from kas.cli.output import table
from kas.errors import ConfigError, KasError
from kas.profiles import EXECUTION_MODES, KEYS, PROFILES, suggest
from kas.waves.scheduler import TERMINAL


@click.group()
def wave() -> None:
    """Run waves of agent tasks with at most max_parallel_wave_tasks at once."""


def parse_sets(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs into a validated resources table."""
    from kas.profiles import parse_value

    table: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: use KEY=VALUE, e.g. --set max_parallel_wave_tasks=2")
        if key == "profile":
            if value not in PROFILES:
                raise ConfigError(
                    f"--set profile={value}: unknown profile; valid profiles: {', '.join(PROFILES)}"
                )
            table[key] = value
        elif key in KEYS:
            try:
                table[key] = parse_value(key, value)
            except ConfigError as exc:
                raise ConfigError(f"--set {exc.message}") from None
        else:
            raise ConfigError(f"--set: unknown key '{key}'{suggest(key, [*KEYS, 'profile'])}")
    return table


class View:
    """What the user sees: JSON lines, plain event lines (piped), or a live block redrawn on a TTY."""

    def __init__(self, as_json: bool, live: bool) -> None:
        self.as_json = as_json
        self.live = live and not as_json
        self.lock = threading.Lock()
        self.runner: Any = None
        self.drawn = 0
        self.wave = 0
        self.stopped = threading.Event()

    def event(self, data: dict[str, Any]) -> None:
        with self.lock:
            if self.as_json:
                click.echo(json.dumps(data))
                return
            kind = data["event"]
            if kind == "wave_started":
                self.wave, self.drawn = data["wave"], 0
                click.echo(f"wave {data['wave']}/{len(self.runner.plan.waves)}: {data['name']}")
            if self.live and kind in ("wave_started", "task_promoted", "task_finished", "task_failed",
                                      "task_cancelled", "tick"):  # fmt: skip
                self._redraw()
            elif not self.live:
                self._line(data)
            if kind in ("wave_done", "run_interrupted") and self.live:
                self._redraw()
                self.drawn = 0
                if kind == "run_interrupted":
                    click.echo("interrupted: stopping running tasks")

    def start_ticker(self) -> None:
        """Redraw once a second so elapsed times move; display only, it never drives the scheduler."""

        def tick() -> None:
            while not self.stopped.wait(1.0):
                if self.drawn:
                    self.event({"event": "tick"})

        threading.Thread(target=tick, daemon=True).start()

    def _line(self, data: dict[str, Any]) -> None:
        kind = data["event"]
        if kind == "task_promoted":
            click.echo(f"  started  {data['task']} (pid {data['pid']})")
        elif kind == "task_finished":
            status = "done" if data["ok"] else f"failed {data['exit_status']}"
            click.echo(f"  {status:<8} {data['task']} ({data['elapsed']:.1f}s)")
        elif kind == "task_failed":
            click.echo(f"  failed   {data['task']}: {data['reason']}")
        elif kind == "task_cancelled":
            click.echo(f"  cancelled {data['task']}")
        elif kind == "wave_done":
            click.echo(f"  wave {data['wave']} done: {data['done']} ok, {data['failed']} failed")
        elif kind == "run_interrupted":
            click.echo("interrupted: stopping running tasks")

    def _redraw(self) -> None:
        runs = [r for r in self.runner.result.tasks if r.wave == self.wave]
        finished = sum(1 for r in runs if r.state in TERMINAL)
        lines = [f"  {r.task.id:<20} {r.label:<12} {r.elapsed:6.1f}s" for r in runs]
        lines.append(f"  [{finished}/{len(runs)} finished]")
        if self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F")
        sys.stdout.write("".join(f"\x1b[2K{line}\n" for line in lines))
        sys.stdout.flush()
        self.drawn = len(lines)

    def output(self, task_id: str, line: str) -> None:
        with self.lock:
            if self.live and self.drawn:
                sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
                self.drawn = 0
            click.echo(f"[{task_id}] {line}")
            if self.live:
                self._redraw()


def confirm_next(yes: bool, as_json: bool) -> tuple[Any, dict[str, str]]:
    """Ask before each later wave; with no terminal and no --yes, stop instead of hanging."""
    why: dict[str, str] = {}

    def ask(index: int) -> bool:
        if yes:
            return True
        stream = sys.stdin
        try:
            interactive = stream.isatty()
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            interactive, fd = False, None
        if not interactive and fd is not None and not select.select([fd], [], [], 0.2)[0]:
            why["reason"] = "no-terminal"
            return False
        prompt = f"Start wave {index}?"
        if interactive:
            answer: bool | None = click.confirm(prompt, default=True, err=as_json)
        else:
            answer = _read_answer(stream, prompt, as_json)
        if answer is None:
            why["reason"] = "no-terminal"
            return False
        if not answer:
            why["reason"] = "declined"
        return answer

    return ask, why


def _read_answer(stream: Any, prompt: str, as_json: bool) -> bool | None:
    """A piped answer (scripts, tests); None at end of input, which means nobody can answer."""
    click.echo(f"{prompt} [Y/n]: ", nl=False, err=as_json)
    line = stream.readline()
    click.echo(line.strip(), err=as_json)
    if not line:
        return None
    return line.strip().lower() in ("", "y", "yes")


@wave.command("run")
@click.argument(
    "plan_file",
    metavar="PLAN.toml",
    type=click.Path(dir_okay=False, path_type=Path),
    shell_complete=plan_files,
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    shell_complete=set_keys,
    help="Override a [resources] key for this run (repeatable); beats the plan and the config.",
)
@click.option("--mode", type=click.Choice(EXECUTION_MODES), help="Override the execution mode.")
@click.option("--yes", "-y", is_flag=True, help="Start every later wave without asking.")
@click.option("--fail-fast", is_flag=True, help="After a failure, promote nothing more and stop.")
@click.option("--show-output", is_flag=True, help="Echo each task's output, prefixed by its id.")
@click.option("--json", "as_json", is_flag=True, help="Stream one JSON object per event.")
@click.option(
    "--grace", default=5.0, show_default=True, help="Seconds between SIGTERM and SIGKILL on interrupt."
)
@click.option("--tmux-socket", envvar="KAS_TMUX_SOCKET", help="tmux socket name (tmux -L) for tmux mode.")
@click.option("--tmux-session", envvar="KAS_TMUX_SESSION", default="kas", show_default=True,
              help="tmux session for the task windows.")  # fmt: skip
@click.pass_obj
def run(
    app: App,
    plan_file: Path,
    sets: tuple[str, ...],
    mode: str | None,
    yes: bool,
    fail_fast: bool,
    show_output: bool,
    as_json: bool,
    grace: float,
    tmux_socket: str | None,
    tmux_session: str,
) -> None:
    """Run the waves of PLAN.toml in order.

    In each wave at most max_parallel_wave_tasks tasks run at once (0 = all); the rest wait as pending
    and are promoted, in plan order, the moment a running task ends. Before each later wave kas asks
    for confirmation (--yes skips it). Each task's output goes to its own log file.

    Settings: the config's [resources], then the plan's [resources], then --set.

    \b
    Exit: 0 all tasks succeeded, 1 some failed, 2 plan/config error, 130 interrupted.
    """
    from kas.waves.plan import load_plan
    from kas.waves.runner import RunOptions, WaveRunner

    plan = load_plan(plan_file)
    overrides = parse_sets(sets)
    resolved = app.resolve(plan.resources, overrides, quiet=as_json)
    chosen_mode = mode or plan.mode or resolved["execution_mode"]
    view = View(as_json, live=sys.stdout.isatty() and os.environ.get("TERM") != "dumb")
    ask, why = confirm_next(yes, as_json)
    runner = WaveRunner(
        plan,
        resolved,
        RunOptions(chosen_mode, fail_fast, show_output, tmux_socket, tmux_session, grace),
        view.event,
        ask,
        view.output,
    )
    view.runner = runner
    if view.live:
        view.start_ticker()
    if not as_json:
        cap = resolved["max_parallel_wave_tasks"] or "unlimited"
        click.echo(f"plan {plan.name}: {plan.task_count} tasks in {len(plan.waves)} wave(s), "
                   f"profile {resolved.name}, at most {cap} at once, mode {chosen_mode}")  # fmt: skip
    result = runner.run()
    view.stopped.set()
    if not as_json:
        summary(result)
    if result.stopped_before is not None:
        if why.get("reason") == "no-terminal":
            raise KasError(f"wave {result.stopped_before} needs confirmation but stdin is not a terminal; "
                           "rerun with --yes")  # fmt: skip
        click.echo(f"stopped before wave {result.stopped_before}", err=as_json)
    sys.exit(result.exit_code)


def summary(result: Any) -> None:
    rows = [(r.task.id, r.wave, r.label, f"{r.elapsed:.1f}s", r.reason or "", r.log) for r in result.tasks]
    click.echo()
    click.echo(table(rows, ("TASK", "WAVE", "STATUS", "TIME", "NOTE", "LOG")))
    if result.failed:
        click.echo(f"\nfailed: {', '.join(r.task.id for r in result.failed)}")
    elif not result.interrupted:
        click.echo(f"\nall {len(result.tasks)} task(s) succeeded")
