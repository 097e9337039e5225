"""Shared fixtures: a private state dir and project per test, and a private tmux server.

Nothing here touches the user's real state directory or default tmux server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own state dir, HOME, tmux socket and an empty project as cwd; no inherited config.

    The tmux socket is private even for tests that do not mean to use tmux, so none can ever reach the
    user's default server; whatever server a test started there is killed afterwards.
    """
    state = tmp_path / "state"
    monkeypatch.setenv("KAS_STATE_DIR", str(state))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("KASMOS_CONFIG", "KAS_TMUX_SESSION", "TMUX", "MAKEFLAGS", "GOMAXPROCS"):
        monkeypatch.delenv(var, raising=False)
    socket = f"kas-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KAS_TMUX_SOCKET", socket)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    yield project
    if shutil.which("tmux"):
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
    (socket_dir / socket).unlink(missing_ok=True)  # tmux leaves the socket file behind


@pytest.fixture
def project(isolated: Path) -> Path:
    return isolated


@pytest.fixture
def write_config(project: Path) -> Callable[[str], Path]:
    """Write ``.kasmos/config.toml`` in the test project and return its path."""

    def write(text: str, where: Path | None = None) -> Path:
        path = (where or project) / ".kasmos" / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def interactive(write_config: Callable[[str], Path]) -> Path:
    return write_config('[resources]\nprofile = "interactive"\n')


@pytest.fixture
def tmux_socket() -> str:
    """The test's private tmux server name (tmux -L); ``isolated`` kills it in teardown."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed")
    return os.environ["KAS_TMUX_SOCKET"]


@pytest.fixture
def kas(script_runner, project: Path):  # type: ignore[no-untyped-def]
    """Run the installed ``kas`` console script in a subprocess, in the test project."""

    def run(*args: str, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("cwd", project)
        return script_runner.run([KAS, *args], **kwargs)

    return run


def assert_user_error(result, *fragments: str, code: int = 2) -> None:  # type: ignore[no-untyped-def]
    """A user error: the exit code, one line naming the problem, and no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("kas: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


PYTHON = sys.executable
# The kas installed beside the Python running the tests (a venv's own, not another one on PATH); resolved
# once, so tests that hide tools from PATH can still run kas itself.
_BESIDE = Path(sys.executable).with_name("kas")
KAS = str(_BESIDE) if _BESIDE.exists() else shutil.which("kas") or "kas"
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
