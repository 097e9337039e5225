"""``kas wave run``: run a plan's waves with the profile's cap, a live view, and a summary."""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kas.cli.app import App
from kas.cli.complete import plan_files, set_keys
from kas.cli.options import grace_option, json_option, mode_option, tmux_session_option, tmux_socket_option
from kas.cli.output import Output, safe

if TYPE_CHECKING:
    from kas.waves.plan import Plan
    from kas.waves.runs import RunRecord


@click.group()
def wave() -> None:
    """Run waves of agent tasks with at most max_parallel_wave_tasks at once."""


def confirm_next(out: Output, yes: bool) -> Callable[[int], bool | None]:
    """Ask before each later wave: True go on, False declined, None nobody can answer (no terminal)."""

    def ask(index: int) -> bool | None:
        if yes:
            return True
        stream = sys.stdin
        try:
            interactive = stream.isatty()
        except (AttributeError, ValueError):
            return None  # stdin closed: nobody can answer
        try:
            fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None  # an in-memory stream (a script's piped answers in tests)
        if not interactive and fd is not None and not select.select([fd], [], [], 0.2)[0]:
            return None
        prompt = f"Start wave {index}?"
        if interactive:
            try:
                return bool(click.confirm(prompt, default=True, err=out.as_json))
            except click.Abort:  # Ctrl-D at the prompt: a no
                out.line("", err=out.as_json)
                return False
        return _read_answer(out, stream, prompt)

    return ask


def _read_answer(out: Output, stream: Any, prompt: str) -> bool | None:
    """A piped answer (scripts, tests); None at end of input, which means nobody can answer. The
    question is shown with its answer, once there is one: a run with nothing to read (stdin is
    /dev/null, as under CI) prints no question nobody could see answered."""
    try:
        line = stream.readline()
    except (OSError, ValueError):
        return None
    if not line:
        return None
    out.line(f"{prompt} [Y/n]: {line.strip()}", err=out.as_json)
    return line.strip().lower() in ("", "y", "yes")


@wave.command("example", short_help="Print the bundled example plan.")
def example() -> None:
    """Print the bundled example plan (kas wave example > plan.toml).

    It is the plan the README runs: two waves of small real tasks under the interactive profile.
    """
    from importlib.resources import files

    click.echo(files("kas").joinpath("example_plan.toml").read_text(encoding="utf-8"), nl=False)


@wave.command("run")
@click.argument(
    "plan_file",
    metavar="[PLAN.toml]",
    required=False,
    type=click.Path(dir_okay=False, path_type=Path),
    shell_complete=plan_files,
)
@click.option(
    "--resume",
    metavar="RUN_ID",
    help="Run again what did not succeed in an earlier run: same plan, same settings, same mode.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    shell_complete=set_keys,
    help="Override a [resources] key for this run (repeatable); beats the plan and the config.",
)
@click.option(
    "-j",
    "--max-parallel",
    type=click.IntRange(min=0),
    metavar="N",
    help="At most N tasks at once (0 = all); the same as --set max_parallel_wave_tasks=N.",
)
@mode_option("Override the execution mode (beats the plan's [defaults] mode and the config).")
@click.option("--yes", "-y", is_flag=True, help="Start every later wave without asking.")
@click.option(
    "--fail-fast",
    is_flag=True,
    help="After a failure, start nothing more (pending tasks are cancelled; running ones finish).",
)
@click.option("--show-output", is_flag=True, help="Echo each task's output, prefixed by its id.")
@json_option("Stream one JSON object per event.")
@grace_option("Seconds between SIGTERM and SIGKILL on interrupt.")
@tmux_socket_option
@tmux_session_option
@click.pass_obj
def run(
    app: App,
    plan_file: Path | None,
    resume: str | None,
    sets: tuple[str, ...],
    max_parallel: int | None,
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
    Exit: 0 all tasks succeeded, 1 some failed, 2 plan/config error or a
    confirmation nobody could give, 130 interrupted (the first that applies
    of 130, 1, 2).
    """
    from kas.cli.waveview import View, summary
    from kas.launch.modes import choose_mode
    from kas.profiles import parse_sets
    from kas.resolver import merge_tables, resolve
    from kas.waves.plan import load_plan
    from kas.waves.runner import NO_TERMINAL, RunOptions, WaveRunner
    from kas.waves.runs import RunRecord

    out = app.output(as_json)
    skipped: list[str] = []
    if resume:
        if plan_file or sets or max_parallel is not None or mode:
            raise click.UsageError(
                "--resume runs the same plan with the same settings: drop PLAN.toml, --set, -j and --mode"
            )
        plan, record, skipped = _resumed(resume)
        table, chosen, fail_fast = record.resources, record.mode, fail_fast or record.fail_fast
        resolved = resolve(table)
        if not as_json:
            out.line(
                f"resuming run {resume}: skipping {', '.join(map(safe, skipped)) or 'nothing'} (succeeded)"
            )
    elif plan_file is None:
        raise click.UsageError("give a plan file (kas wave run PLAN.toml) or --resume RUN_ID")
    else:
        plan = load_plan(plan_file)
        overrides = parse_sets(sets)
        if max_parallel is not None:
            overrides["max_parallel_wave_tasks"] = max_parallel
        resolved = app.resolve(plan.resources, overrides, quiet=True)
        table = merge_tables(app.config.resources, plan.resources, overrides)
        chosen = choose_mode(mode, plan.mode, resolved.settings.execution_mode)
    if not plan.waves:
        out.line(f"nothing to run: every task of run {resume} succeeded")
        return
    view = View(out, live=_isatty(sys.stdout) and os.environ.get("TERM") != "dumb")
    options = RunOptions(chosen, fail_fast, show_output, tmux_socket, tmux_session, grace)
    runner = WaveRunner(plan, resolved, options, view.event, confirm_next(out, yes), view.output)
    before = tuple(skipped) if resume else ()
    RunRecord(runner.result.run_id, str(plan.path.resolve()), table, chosen, fail_fast, before).save(
        runner.log_dir
    )
    view.runner = runner
    if view.live:
        view.start_ticker()
    if not as_json:
        cap = resolved.settings.max_parallel_wave_tasks
        limit = f"at most {cap} at once" if cap else "all of a wave at once"
        count = plan.task_count
        tasks = f"{count} task{'s' if count != 1 else ''} in {len(plan.waves)} wave(s)"
        out.line(f"run {runner.result.run_id}: plan {safe(plan.name)}, {tasks}, profile {resolved.name}, "
                 f"{limit}, mode {chosen}")  # fmt: skip
    result = runner.run()
    view.stopped.set()
    if not as_json:
        summary(out, result)
    if result.stopped_before is not None:
        if result.stop_reason == NO_TERMINAL:
            out.line(f"kas: error: wave {result.stopped_before} needs confirmation but stdin is not a "
                     "terminal; rerun with --yes", err=True)  # fmt: skip
        else:
            out.line(f"stopped before wave {result.stopped_before}", err=as_json)
    if result.exit_code in (1, 130) or result.stopped_before is not None:
        out.line(f"to run again what did not succeed: kas wave run --resume {result.run_id}", err=as_json)
    sys.exit(result.exit_code)


def _resumed(run_id: str) -> tuple[Plan, RunRecord, list[str]]:
    """The plan of an earlier run less what succeeded in it, with that run's settings and mode."""
    from kas.registry import Registry
    from kas.waves.plan import load_plan
    from kas.waves.runs import load_record, remaining

    record = load_record(run_id)
    plan = load_plan(Path(record.plan))
    registry = Registry()
    try:
        rest, skipped = remaining(plan, record, registry)
    finally:
        registry.close()
    return rest, record, skipped


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
