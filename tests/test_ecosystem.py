"""Generated completions and man pages stay fresh; completion is dynamic; start-up stays light."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kas.registry import Instance, Registry
from tests.conftest import KAS

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


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_itself_completes_a_set_value(project: Path, tmp_path: Path) -> None:
    """Type into a real interactive bash on a pty, press TAB, and read what bash put on the line."""
    import pty
    import select

    primary, secondary = pty.openpty()
    env = {**os.environ, "HOME": str(tmp_path), "INPUTRC": "/dev/null", "PS1": "$ ", "TERM": "dumb"}
    env["PATH"] = f"{Path(KAS).parent}{os.pathsep}{env['PATH']}"
    shell = subprocess.Popen(["bash", "--norc", "--noprofile", "-i"], stdin=secondary, stdout=secondary,
                             stderr=secondary, cwd=project, env=env, start_new_session=True)  # fmt: skip
    os.close(secondary)

    def until(text: str, timeout: float = 15) -> str:
        seen = b""
        deadline = time.monotonic() + timeout
        while text.encode() not in seen:
            ready, _, _ = select.select([primary], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(
                    f"bash never showed {text!r}; it showed {seen.decode(errors='replace')!r}"
                )
            seen += os.read(primary, 4096)
        return seen.decode(errors="replace")

    try:
        os.write(primary, f"source {ROOT / 'completions' / 'kas.bash'}; echo sourced\n".encode())
        until("sourced")
        os.write(primary, b"kas wave run --set execution_mode=tm\t")
        until("execution_mode=tmux")
    finally:
        shell.kill()
        shell.wait()
        os.close(primary)


def test_completes_toml_plan_files(kas, project: Path) -> None:
    (project / "plan.toml").write_text("")
    (project / "plans").mkdir()
    (project / "plans" / "big.toml").write_text("")
    (project / "notes.txt").write_text("")
    assert sorted(complete(kas, "kas wave run p")) == ["plan.toml", "plans/"]
    assert complete(kas, "kas wave run plans/") == ["plans/big.toml"]


HEAVY = ("libtmux", "psutil", "tabulate")
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
