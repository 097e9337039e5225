"""Generated completions and man pages stay fresh; completion is dynamic; start-up stays light."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from kas.registry import Instance, Registry

ROOT = Path(__file__).resolve().parent.parent


def test_committed_completions_and_man_pages_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_kas_completion_prints_the_committed_script(kas, shell: str) -> None:
    result = kas("completion", shell)
    assert result.returncode == 0
    assert result.stdout == (ROOT / "completions" / f"kas.{shell}").read_text()
    assert "_KAS_COMPLETE" in result.stdout


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_man_pages_render_cleanly() -> None:
    pages = sorted((ROOT / "man").glob("*.1"))
    assert {"kas.1", "kas-wave-run.1", "kas-spawn.1", "kas-instance-list.1"} <= {p.name for p in pages}
    for page in pages:
        done = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True
        )
        assert done.returncode == 0 and done.stderr == "", (page.name, done.stderr)


def man_sections(page: Path) -> dict[str, str]:
    """A man page's sections by heading (``.SH NAME`` -> its roff text)."""
    sections: dict[str, str] = {}
    heading = None
    for line in page.read_text().splitlines():
        if line.startswith(".SH "):
            heading = line[4:].strip().strip('"')
            sections[heading] = ""
        elif heading is not None:
            sections[heading] += line + "\n"
    return sections


def test_man_page_summaries_are_whole_sentences() -> None:
    """NAME lines (what whatis and apropos show) and the command lists of groups are never cut off.

    Click shortens a docstring's first line to 45 characters with "..." when a command has no short
    help; click-man takes that for the NAME line.
    """
    pages = sorted((ROOT / "man").glob("*.1"))
    assert len(pages) > 10
    for page in pages:
        sections = man_sections(page)
        command, summary = sections["NAME"].strip().split(r" \- ", 1)
        assert command == page.stem.replace("-", r"\-")
        assert summary.endswith(".") and not summary.endswith("..."), (page.name, summary)
        listed = [line.strip() for line in sections.get("COMMANDS", "").splitlines() if line.startswith("  ")]
        for line in listed:
            assert not line.endswith("..."), (page.name, line)


def every_command() -> Iterator[tuple[str, click.Command]]:
    """Each command of the CLI (lazy ones loaded) with the name of its man page."""
    from kas.cli import main

    def walk(command: click.Command, ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
        yield ctx.command_path.replace(" ", "-") + ".1", command
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))

    yield from walk(main, click.Context(main, info_name="kas"))


def test_kas_man_page_has_every_environment_variable_and_file() -> None:
    """kas(1) names every variable kas reads (the option envvars and the names in the code) and file."""
    from kas.config import CONFIG_ENV
    from kas.registry import BUSY_ENV, DB_NAME
    from kas.statedir import STATE_ENV

    sections = man_sections(ROOT / "man" / "kas.1")
    documented = re.findall(r"^\.B (\S+)$", sections["ENVIRONMENT"], re.M)
    named = {"KASMOS_CONFIG", "KAS_STATE_DIR", "KAS_TMUX_SOCKET", "KAS_TMUX_SESSION", "XDG_STATE_HOME",
             "KAS_DB_BUSY_TIMEOUT", "KAS_LOG_MAX", "KAS_TMUX_KEEP_WINDOWS", "NO_COLOR", CONFIG_ENV, BUSY_ENV, STATE_ENV}  # fmt: skip
    envvars = {p.envvar for _, c in every_command() for p in c.params if isinstance(p.envvar, str)}
    assert envvars, "no option reads the environment any more?"
    assert named | envvars <= set(documented), sorted((named | envvars) - set(documented))
    files = re.findall(r"^\.I (\S+)$", sections["FILES"], re.M)
    for part in (".kasmos/config.toml", DB_NAME, "logs/", "status/"):
        assert any(f.endswith(part) for f in files), (part, files)


def test_each_command_page_names_the_variables_its_options_read() -> None:
    for page, command in every_command():
        for param in command.params:
            if isinstance(param.envvar, str):
                env = man_sections(ROOT / "man" / page).get("ENVIRONMENT", "")
                assert f".B {param.envvar}\n" in env, (page, param.envvar)


def plan_section() -> tuple[str, str]:
    """kas-wave-run(1)'s PLAN FILES section, and its example as plain TOML."""
    text = man_sections(ROOT / "man" / "kas-wave-run.1")["PLAN FILES"]
    example = text.split(".nf\n", 1)[1].split(".fi\n", 1)[0].replace("\\-", "-")
    assert "\\" not in example, "a roff escape the test does not undo"
    return text, example


def test_wave_run_page_describes_every_plan_key() -> None:
    from kas.waves.plan import DEFAULT_KEYS, PLAN_KEYS, TASK_KEYS, WAVE_KEYS

    text, _ = plan_section()
    headings = re.findall(r"^\.B (\S+)$", text, re.M)  # name, [defaults], [[waves.tasks]], ...
    described = set(re.findall(r"\\fB(\w+)\\fP", text)) | {h.strip("[]").split(".")[-1] for h in headings}
    missing = {*PLAN_KEYS, *DEFAULT_KEYS, *WAVE_KEYS, *TASK_KEYS} - described
    assert not missing, sorted(missing)


def test_the_plan_example_in_the_man_page_loads(tmp_path: Path) -> None:
    from kas.waves.plan import load_plan

    _, example = plan_section()
    (tmp_path / "services" / "db").mkdir(parents=True)
    (tmp_path / "plan.toml").write_text(example)
    plan = load_plan(tmp_path / "plan.toml")
    assert [[t.id for t in w.tasks] for w in plan.waves] == [["api", "db"], ["review"]]
    assert plan.waves[0].tasks[0].argv == ["cargo", "build", "-p", "api"]
    assert plan.waves[0].tasks[1].timeout == 600


def complete(kas, words: str, cwd: Path | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    """Drive Click's bash completion protocol the way the shell does."""
    parts = words.split(" ")
    env = {
        **os.environ,
        "_KAS_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1),
    }
    result = kas(env=env, **({"cwd": cwd} if cwd else {}))
    assert result.returncode == 0, result.stderr
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_completes_instance_ids(kas, project: Path) -> None:
    registry = Registry()
    for inst_id in ("abc123", "abd456", "zzz999"):
        registry.insert(Instance(id=inst_id, name="n", mode="sdk", status="exited", cwd="/", argv=["x"],
                                 wrapped_argv=["x"], resource_profile="normal", settings={}, env={}))  # fmt: skip
    registry.close()
    assert sorted(complete(kas, "kas instance show ab")) == ["abc123", "abd456"]
    assert sorted(complete(kas, "kas instance stop ")) == ["abc123", "abd456", "zzz999"]


def test_completes_profile_names_and_set_keys(kas) -> None:
    assert complete(kas, "kas profile show --profile ") == ["normal", "interactive", "custom"]
    assert complete(kas, "kas wave run --set max_par") == ["max_parallel_wave_tasks="]
    assert complete(kas, "kas wave run --set execution_mode=t") == ["execution_mode=tmux"]
    assert "profile=" in complete(kas, "kas wave run --set p")


def test_bash_split_at_equals_still_completes_the_value(kas) -> None:
    # What bash really sends for `--set execution_mode=t<TAB>`: "=" is a word break, so three words.
    assert complete(kas, "kas wave run --set execution_mode = t") == ["tmux"]
    assert sorted(complete(kas, "kas wave run --set execution_mode =")) == ["sdk", "tmux"]
    assert complete(kas, "kas spawn --mode = t") == ["tmux"]
    assert complete(kas, "kas wave run --set gomaxprocs = ") == []


def answer(shell: str, words: str, *, script_knows_nospace: bool, cwd: Path | None = None) -> list[str]:
    """What this checkout answers a completion script, one item per entry (type first, as sent)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_KAS_COMPLETE": f"{shell}_complete", "COMP_WORDS": words}
    # fish sends the incomplete word itself where bash and zsh send its index.
    env["COMP_CWORD"] = words.split(" ")[-1] if shell == "fish" else str(len(words.split(" ")) - 1)
    if script_knows_nospace:
        env["_KAS_COMPLETE_NOSPACE"] = "1"
    done = subprocess.run([sys.executable, "-m", "kas"], capture_output=True, text=True, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    if shell == "zsh":  # type, value and help on three lines each
        lines = done.stdout.splitlines()
        return [",".join(lines[i : i + 2]) for i in range(0, len(lines), 3)]
    return [line.split("\t")[0] for line in done.stdout.splitlines()]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_key_and_directory_completions_say_nospace_to_scripts_that_know_it(shell: str, project: Path) -> None:
    (project / "plans").mkdir()
    (project / "plan.toml").write_text("")
    assert answer(shell, "kas wave run --set max", script_knows_nospace=True) == [
        "nospace,max_parallel_wave_tasks="
    ]
    assert answer(shell, "kas wave run p", script_knows_nospace=True, cwd=project) == [
        "plain,plan.toml",
        "nospace,plans/",
    ]
    # A value is finished: it gets its space.
    assert answer(shell, "kas wave run --set execution_mode=t", script_knows_nospace=True) == [
        "plain,execution_mode=tmux"
    ]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_an_older_installed_script_still_gets_keys_and_directories(shell: str, project: Path) -> None:
    """A script from before nospace (or plain Click's) drops item types it does not know: send plain."""
    (project / "plans").mkdir()
    assert answer(shell, "kas wave run --set max", script_knows_nospace=False) == [
        "plain,max_parallel_wave_tasks="
    ]
    assert answer(shell, "kas wave run pl", script_knows_nospace=False, cwd=project) == ["plain,plans/"]


def test_fish_gets_plain_items_and_adds_no_space_itself(project: Path) -> None:
    """fish's script (Click's) knows no nospace and would drop it; fish adds no space after "=" or "/" itself."""
    (project / "plans").mkdir()
    assert answer("fish", "kas wave run --set max", script_knows_nospace=False) == [
        "plain,max_parallel_wave_tasks="
    ]
    assert answer("fish", "kas wave run pl", script_knows_nospace=False, cwd=project) == ["plain,plans/"]


SHELL_SETUP = {
    "bash": "source {script}",
    # Installed as README says: the file as _kas on fpath, then compinit (the autoload branch).
    "zsh": "bindkey -e; fpath=({dir} $fpath); autoload -U compinit; compinit -u -D",
    "fish": "source {script}",
}
SHELL_ARGV = {
    "bash": ["bash", "--norc", "--noprofile", "-i"],
    "zsh": ["zsh", "-f", "-i"],
    "fish": ["fish", "--no-config", "-i"],
}


class Shell:
    """A real interactive shell on a pty, with kas's committed completion script loaded.

    ``kas`` on its PATH runs this checkout (``python -m kas``), never an installed copy. Tests type into
    it, press TAB, and read what the shell put on the line.
    """

    def __init__(self, name: str, cwd: Path, home: Path) -> None:
        import pty

        bin_dir = home / "bin"
        bin_dir.mkdir(parents=True)
        wrapper = bin_dir / "kas"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kas "$@"\n')
        wrapper.chmod(0o755)
        zsh_dir = home / "zfunc"
        zsh_dir.mkdir()
        (zsh_dir / "_kas").write_text((ROOT / "completions" / "kas.zsh").read_text())
        env = {**os.environ, "HOME": str(home), "INPUTRC": "/dev/null", "PS1": "$ ", "TERM": "dumb"}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        env["PYTHONPATH"] = str(ROOT)
        self.primary, secondary = pty.openpty()
        self.process = subprocess.Popen(SHELL_ARGV[name], stdin=secondary, stdout=secondary, stderr=secondary,
                                        cwd=cwd, env=env, start_new_session=True,
                                        preexec_fn=self._take_terminal)  # fmt: skip
        os.close(secondary)
        setup = SHELL_SETUP[name].format(script=ROOT / "completions" / f"kas.{name}", dir=zsh_dir)
        self.type(f"{setup}; echo so''urced\r")
        self.until("sourced")

    @staticmethod
    def _take_terminal() -> None:
        """Make the pty the shell's controlling terminal: fish refuses to run interactively without one."""
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def type(self, keys: str) -> None:
        os.write(self.primary, keys.encode())

    def until(self, text: str, timeout: float = 15) -> str:
        """Everything the shell wrote until ``text`` appeared; fail with what it showed instead."""
        import select

        seen = b""
        deadline = time.monotonic() + timeout
        while text.encode() not in seen:
            ready, _, _ = select.select([self.primary], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(
                    f"the shell never showed {text!r}; it showed {seen.decode(errors='replace')!r}"
                )
            seen += os.read(self.primary, 4096)
        return seen.decode(errors="replace")

    def words(self, expected: list[str]) -> None:
        """The words now on the line, as the shell will pass them, are ``expected``; the line is run.

        Ctrl-A goes to the start of the line and turns it into a printf of one <word> per line, so a
        space the completion left inside a word shows as two words.
        """
        self.type("\x01printf '<%s>\\n' \r")
        self.until("".join(f"<{w}>\r\n" for w in expected))

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.primary)


SHELLS = [pytest.param(name, marks=pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} not installed"))
          for name in ("bash", "zsh", "fish")]  # fmt: skip


@pytest.fixture
def shell(request: pytest.FixtureRequest, project: Path, tmp_path: Path) -> Iterator[Shell]:
    running = Shell(request.param, project, tmp_path / "home")
    yield running
    running.close()


@pytest.mark.parametrize("shell", SHELLS, indirect=True)
def test_shell_itself_completes_a_set_value(shell: Shell) -> None:
    shell.type("kas wave run --set execution_mode=tm\t")
    shell.until("execution_mode=tmux")
    shell.words(["kas", "wave", "run", "--set", "execution_mode=tmux"])


@pytest.mark.parametrize("shell", SHELLS, indirect=True)
def test_shell_leaves_the_cursor_right_after_a_set_key(shell: Shell) -> None:
    """``--set max<TAB>`` then ``2`` reads ``max_parallel_wave_tasks=2``: no space to backspace over."""
    shell.type("kas wave run --set max\t")
    shell.until("max_parallel_wave_tasks=")
    shell.type("2")
    shell.words(["kas", "wave", "run", "--set", "max_parallel_wave_tasks=2"])


@pytest.mark.parametrize("shell", SHELLS, indirect=True)
def test_shell_offers_profile_names_after_set_profile(shell: Shell) -> None:
    shell.type("kas wave run --set profile=inter\t")
    shell.until("profile=interactive")
    shell.words(["kas", "wave", "run", "--set", "profile=interactive"])


@pytest.mark.parametrize("shell", SHELLS, indirect=True)
def test_shell_tabs_into_a_directory_of_plans(shell: Shell, project: Path) -> None:
    """``exa<TAB>`` gives ``examples/`` with no space, so the next TAB completes a plan inside it.

    In zsh the second TAB also checks that an autoloaded ``_kas`` completes on every TAB, not every other.
    """
    (project / "examples").mkdir()
    (project / "examples" / "plan.toml").write_text("")
    shell.type("kas wave run exa\t")
    shell.until("examples/")
    shell.type("\t")
    shell.until("plan.toml")
    shell.words(["kas", "wave", "run", "examples/plan.toml"])


def test_completes_toml_plan_files(kas, project: Path) -> None:
    (project / "plan.toml").write_text("")
    (project / "plans").mkdir()
    (project / "plans" / "big.toml").write_text("")
    (project / "notes.txt").write_text("")
    assert sorted(complete(kas, "kas wave run p")) == ["plan.toml", "plans/"]
    assert complete(kas, "kas wave run plans/") == ["plans/big.toml"]


HEAVY = ("psutil", "tabulate", "starlette", "uvicorn")
PROBE = """
import json, os, sys
from kas.cli import main
try:
    main(args=sys.argv[1:], prog_name="kas")
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--help"], {}),
        (["profile", "show", "--resolved"], {}),
        (["profile", "show", "--json"], {}),
        ([], {"_KAS_COMPLETE": "bash_complete", "COMP_WORDS": "kas instance show ", "COMP_CWORD": "3"}),
        ([], {"_KAS_COMPLETE": "zsh_complete", "COMP_WORDS": "kas wave run --set ", "COMP_CWORD": "4"}),
    ],
)
def test_fast_paths_do_not_import_heavy_modules(write_config, args: list[str], env: dict[str, str]) -> None:
    write_config('[resources]\nprofile = "interactive"\n')
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                          text=True, env={**os.environ, **env})  # fmt: skip
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert loaded == [], f"{args or env}: imported {loaded}"


def test_version_and_python_m(kas) -> None:
    from kas import __version__

    assert kas("--version").stdout.strip() == f"kas, version {__version__}"
    done = subprocess.run([sys.executable, "-m", "kas", "--version"], capture_output=True, text=True)
    assert done.stdout.strip() == f"kas, version {__version__}"


@pytest.mark.skipif(os.environ.get("KAS_SKIP_WHEEL") == "1", reason="KAS_SKIP_WHEEL=1")
def test_wheel_and_sdist_install_into_a_fresh_venv(tmp_path: Path) -> None:
    """python -m build, then pip install the wheel into a new venv: kas runs; data files are included."""
    import tarfile
    import zipfile

    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], check=True, capture_output=True
    )
    wheel = next(dist.glob("*.whl"))
    assert wheel.name.startswith("kas_agents-")  # "kas" on PyPI is another project (the bitbake tool)
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("share/man/man1/kas-wave-run.1") for n in names)
    assert any(n.endswith("share/bash-completion/completions/kas") for n in names)
    assert any(n.endswith("share/zsh/site-functions/_kas") for n in names)
    assert any(n.endswith("share/fish/vendor_completions.d/kas.fish") for n in names)
    with tarfile.open(next(dist.glob("*.tar.gz"))) as archive:
        sdist = archive.getnames()
    assert any(n.endswith("completions/kas.zsh") for n in sdist) and any(
        n.endswith("man/kas.1") for n in sdist
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "KAS_STATE_DIR": str(tmp_path / "state")}
    version = subprocess.run(
        [str(venv / "bin" / "kas"), "--version"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert version.returncode == 0 and "kas, version" in version.stdout
    show = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "kas", "profile", "show"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert show.returncode == 0 and "profile: normal" in show.stdout
    assert (venv / "share" / "man" / "man1" / "kas.1").is_file()
