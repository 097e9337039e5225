"""`kas serve`: a real server on a free port, real agents, real HTTP; and the admin page in a real
headless browser (Debian's Chromium through its WebDriver)."""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import KAS

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


class Server(NamedTuple):
    base: str
    token: str
    port: int


class Reply(NamedTuple):
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def server(interactive, project: Path) -> Iterator[Server]:
    proc = subprocess.Popen([KAS, "serve", "--port", "0"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line
    base = line.split("listening on ", 1)[1].split()[0]
    token = subprocess.run(
        [KAS, "serve", "--print-token"], cwd=project, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield Server(base, token, int(base.rsplit(":", 1)[1]))
    finally:
        subprocess.run([KAS, "instance", "stop", "--all", "--grace", "1"], cwd=project, capture_output=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0  # a clean shutdown on SIGTERM


def call(server: Server, method: str, path: str, *, token: str | None = "", body: Any = None,
         headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
    request = urllib.request.Request(server.base + path, method=method, headers=headers or {})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token or server.token}")
    if body is not None:
        request.data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request.add_header("content-type", "application/json")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=15) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


def spawn(project: Path, *argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [KAS, "spawn", "--detach", "--json", "--", *argv], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_api_lists_shows_logs_stops_and_switches_like_the_cli(server: Server, project: Path) -> None:
    row = spawn(project, "sh", "-c", "echo hello from the agent; sleep 60")
    listed = call(server, "GET", "/api/v1/instances")
    assert listed.status == 200
    [inst] = listed.json()
    cli = json.loads(
        subprocess.run(
            [KAS, "instance", "list", "--json"], cwd=project, capture_output=True, text=True
        ).stdout
    )
    assert inst["id"] == row["id"] == cli[0]["id"] and set(inst) == set(cli[0])  # the same document
    assert inst["resource_profile"] == "interactive" and inst["live"][0]["nice"] == 10 and "telemetry" in inst
    shown = call(server, "GET", f"/api/v1/instances/{row['id']}").json()
    assert {p["pid"] for p in shown["live"]} >= {row["pid"]}
    deadline = time.monotonic() + 10
    while "hello from the agent" not in (
        log := call(server, "GET", f"/api/v1/instances/{row['id']}/log?tail=5").body.decode()
    ):
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    switched = call(server, "POST", "/api/v1/profile/apply", body={"profile": "normal", "ids": [row["id"]]})
    assert switched.status == 200 and switched.json()[0]["profile"] == "normal"
    assert call(server, "GET", f"/api/v1/instances/{row['id']}").json()["resource_profile"] == "normal"
    resolved = call(server, "GET", f"/api/v1/profile?dir={project}").json()
    assert resolved["profile"] == "interactive" and resolved["settings"]["nice"] == 10
    stopped = call(server, "POST", f"/api/v1/instances/{row['id']}/stop")
    assert stopped.status == 200 and stopped.json()["status"] == "stopped"
    assert call(server, "GET", "/api/v1/instances").json() == []
    assert len(call(server, "GET", "/api/v1/instances?all=1").json()) == 1
    schema = call(server, "GET", "/openapi.json").json()
    assert "/api/v1/profile/apply" in schema["paths"]


def test_the_event_stream_tells_of_a_start_within_a_second(server: Server, project: Path) -> None:
    request = urllib.request.Request(
        server.base + "/api/v1/events", headers={"Authorization": f"Bearer {server.token}"}
    )
    with urllib.request.urlopen(request, timeout=15) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        stream.readline()  # the opening comment: the server has its first look
        stream.readline()
        row = spawn(project, "sleep", "60")
        started = time.monotonic()
        seen: list[str] = []
        while time.monotonic() - started < 5:
            ready, _, _ = select.select([stream.fp], [], [], 5)  # type: ignore[attr-defined]
            assert ready
            line = stream.readline().decode()
            seen.append(line)
            if line.startswith("event: started"):
                data = json.loads(stream.readline().decode().removeprefix("data: "))
                assert data["id"] == row["id"] and data["resource_profile"] == "interactive"
                assert time.monotonic() - started < 2.5  # a look every second, plus the spawn's own time
                return
        raise AssertionError(seen)


@pytest.mark.parametrize(
    "case",
    ["no token", "wrong token", "forged host", "cross-origin post", "cookie post without origin", "unknown id",
     "bad json", "bad profile", "ids and all", "bad tail", "not a dir"],
)  # fmt: skip
def test_what_the_server_refuses(server: Server, project: Path, case: str) -> None:
    host = {"Host": f"evil.example:{server.port}"}
    session = (
        call(server, "GET", f"/admin/?token={server.token}", token=None).headers["set-cookie"].split(";")[0]
    )
    expected: dict[str, tuple[int, Reply]] = {
        "no token": (401, call(server, "GET", "/api/v1/instances", token=None)),
        "wrong token": (401, call(server, "GET", "/api/v1/instances", token="x" * 43)),
        "forged host": (403, call(server, "GET", "/api/v1/instances", headers=host)),
        "cross-origin post": (403, call(server, "POST", "/api/v1/profile/apply", body={"profile": "normal", "all": True},
                                        headers={"Origin": "http://evil.example"})),
        "cookie post without origin": (403, call(server, "POST", "/api/v1/profile/apply", token=None,
                                                 body={"profile": "normal", "all": True},
                                                 headers={"Cookie": session})),
        "unknown id": (404, call(server, "GET", "/api/v1/instances/nosuch")),
        "bad json": (400, call(server, "POST", "/api/v1/profile/apply", body=b"{not json")),
        "bad profile": (400, call(server, "POST", "/api/v1/profile/apply", body={"profile": "turbo", "all": True})),
        "ids and all": (400, call(server, "POST", "/api/v1/profile/apply", body={"profile": "normal", "all": True, "ids": ["a"]})),
        "bad tail": (400, call(server, "GET", "/api/v1/instances/x/log?tail=abc")),
        "not a dir": (400, call(server, "GET", "/api/v1/profile?dir=relative/path")),
    }  # fmt: skip
    status, reply = expected[case]
    assert reply.status == status and "error" in reply.json()


def test_the_login_url_swaps_the_token_for_a_strict_cookie(server: Server) -> None:
    login = call(server, "GET", f"/admin/?token={server.token}", token=None)
    assert login.status == 303 and login.headers["location"] == "/admin/"
    cookie = login.headers["set-cookie"]
    # A session of this server's (named after its port), never the token itself.
    assert cookie.startswith(f"kas_token_{server.port}=") and server.token not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = call(server, "GET", "/admin/", token=None, headers={"Cookie": cookie.split(";")[0]})
    assert page.status == 200 and b"kas agents" in page.body
    assert page.headers["x-frame-options"] == "DENY"  # no framing from another local page
    assert call(server, "GET", "/admin/", token=None).status == 401
    assert (
        call(
            server,
            "GET",
            "/admin/",
            token=None,
            headers={"Cookie": f"kas_token_{server.port}={server.token}"},
        ).status
        == 401
    )


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer \xffabc"}, {"Cookie": 'kas_token_1="\xe9"'}, {"Authorization": "TOKEN-without-bearer"}],
)  # fmt: skip
def test_odd_credentials_are_refused_not_crashed_on(server: Server, headers: dict[str, str]) -> None:
    request = urllib.request.Request(server.base + "/api/v1/instances")
    for name, value in headers.items():
        request.add_unredirected_header(name, value.replace("TOKEN", server.token))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_a_nested_body_and_an_ambiguous_name_are_4xx(server: Server, project: Path) -> None:
    assert call(server, "POST", "/api/v1/profile/apply", body=b"[" * 100_000).status == 400
    spawn(project, "sleep", "60")
    spawn(project, "sleep", "60")
    ambiguous = call(server, "GET", "/api/v1/instances/sleep")
    assert ambiguous.status == 409 and "matches several instances" in ambiguous.json()["error"]


def test_print_systemd_unit_runs_kas_serve(project: Path) -> None:
    unit = subprocess.run(
        [KAS, "serve", "--print-systemd-unit"], cwd=project, capture_output=True, text=True
    ).stdout
    assert "ExecStart=" in unit and "serve --host 127.0.0.1 --port 7433" in unit and "[Install]" in unit


def chrome() -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_admin_page_switches_a_profile_in_a_real_browser(
    server: Server, project: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select, WebDriverWait

    row, other = spawn(project, "sleep", "120"), spawn(project, "sleep", "120")
    browser = chrome()
    try:
        browser.get(f"{server.base}/admin/?token={server.token}")
        wait = WebDriverWait(browser, 15)
        card = wait.until(lambda b: b.find_element("css selector", f'[data-id="{row["id"]}"]'))
        assert browser.current_url == f"{server.base}/admin/"  # the token left the address bar
        badges = wait.until(
            lambda b: [
                c.find_element("css selector", ".badge").text
                for c in b.find_elements("css selector", ".card")
            ]
        )
        assert badges == ["interactive", "interactive"]  # a card per agent, each with its profile
        badge = card.find_element("css selector", ".badge")
        wait.until(lambda _: badge.text == "interactive")
        Select(card.find_element("css selector", ".profile")).select_by_visible_text("normal")
        card.find_element("css selector", ".apply").click()
        wait.until(lambda _: badge.text == "")  # normal shows no badge
        assert subprocess.run([KAS, "instance", "show", "--json", row["id"]], cwd=project, capture_output=True,
                              text=True).stdout.count('"resource_profile": "normal"') == 1  # fmt: skip
        Select(card.find_element("css selector", ".profile")).select_by_visible_text("interactive")
        card.find_element("css selector", ".apply").click()
        wait.until(lambda _: badge.text == "interactive")
        browser.save_screenshot(str(tmp_path / "admin.png"))
        card.find_element("css selector", ".stop").click()
        wait.until(
            lambda b: not b.find_elements("css selector", f'[data-id="{row["id"]}"]')
        )  # gone from "running"
        assert browser.find_elements("css selector", f'[data-id="{other["id"]}"]')
        browser.find_element("id", "all").click()  # the filter: finished ones too
        stopped = wait.until(lambda b: b.find_element("css selector", f'[data-id="{row["id"]}"]'))
        wait.until(lambda _: stopped.find_element("css selector", ".status").text.startswith("stopped"))
    finally:
        browser.quit()


def test_the_event_stream_tells_of_an_end_and_a_switch(server: Server, project: Path) -> None:
    row = spawn(project, "sleep", "60")
    request = urllib.request.Request(
        server.base + "/api/v1/events", headers={"Authorization": f"Bearer {server.token}"}
    )
    with urllib.request.urlopen(request, timeout=15) as stream:
        stream.readline()
        stream.readline()
        call(server, "POST", "/api/v1/profile/apply", body={"profile": "normal", "ids": [row["id"]]})
        call(server, "POST", f"/api/v1/instances/{row['id']}/stop")
        kinds: list[str] = []
        deadline = time.monotonic() + 10
        while not {"profile_applied", "finished"} <= set(kinds):
            assert time.monotonic() < deadline, kinds
            line = stream.readline().decode()
            if line.startswith("event: "):
                kinds.append(line.split()[1])
