"""The routes of ``kas serve``: the same library calls as the CLI, so ``--json`` and the API return the
same document for the same thing. Bad input is a 4xx with a JSON error, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kas.errors import KasError
from kas.registry import Registry

ADMIN = Path(__file__).with_name("admin")
TICK = 0.5  # seconds between two looks for the event stream: an event reaches a page within one


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def with_registry(action: Callable[[Registry], Any]) -> Any:
    registry = Registry()
    try:
        return action(registry)
    finally:
        registry.close()


async def in_thread(action: Callable[[Registry], Any]) -> Any:
    """Registry reads and psutil walks block: off the event loop, so the stream and pages stay live."""
    return await asyncio.to_thread(with_registry, action)


def _find(registry: Registry, inst_id: str) -> Any:
    """Exactly this id: the API does not match names or prefixes, as a person at a prompt may."""
    inst = registry.get(inst_id)
    if inst is None or inst.id != inst_id:
        raise LookupError(inst_id)
    return inst


MAX_BODY = 1 << 20
MAX_IDS = 10_000
LOG_BYTES = 4 << 20  # the most of a log one request returns (its last lines)


async def instances(request: Request) -> Response:
    from kas.instances import listing

    show_all = request.query_params.get("all") in ("1", "true", "yes")
    views = await in_thread(lambda r: listing(r, show_all=show_all))
    return JSONResponse([v.to_json() for v in views])


async def instance(request: Request) -> Response:
    from kas.instances import showing

    try:
        view = await in_thread(lambda r: showing(r, _find(r, request.path_params["inst_id"])))
    except LookupError:
        return error(404, f"no instance {request.path_params['inst_id']!r}")
    except KasError as exc:
        return error(409, str(exc))
    return JSONResponse(view.to_json())


async def log(request: Request) -> Response:
    from kas.logs import tail_from_line

    try:
        tail = int(request.query_params.get("tail", "100"))
        if not 0 <= tail <= 100_000:
            raise ValueError
    except ValueError:
        return error(400, "tail must be a number of lines from 0 to 100000")
    try:
        inst = await in_thread(lambda r: _find(r, request.path_params["inst_id"]))
    except LookupError:
        return error(404, f"no instance {request.path_params['inst_id']!r}")
    except KasError as exc:
        return error(409, str(exc))
    if not inst.log_path or not Path(inst.log_path).is_file():
        return error(404, f"instance {inst.id} has no log")

    def read(path: Path) -> str:
        with path.open("rb") as source:
            start = tail_from_line(path, tail)
            end = source.seek(0, 2)
            source.seek(max(start, end - LOG_BYTES))
            return source.read(LOG_BYTES).decode(errors="replace")

    return PlainTextResponse(await asyncio.to_thread(read, Path(inst.log_path)))


async def stop(request: Request) -> Response:
    from kas.instances import stop as stop_instance

    def act(registry: Registry) -> Any:
        return stop_instance(registry, _find(registry, request.path_params["inst_id"]))

    try:
        view = await in_thread(act)
    except LookupError:
        return error(404, f"no instance {request.path_params['inst_id']!r}")
    except KasError as exc:
        return error(409, str(exc))
    request.app.state.changed.set()
    return JSONResponse({"id": view.inst.id, "status": view.status, "exit_status": view.inst.exit_status})


async def apply(request: Request) -> Response:
    from kas.apply import apply_profile
    from kas.profiles import PROFILES

    raw = await request.body()
    if len(raw) > MAX_BODY:
        return error(413, f"the body is over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return error(400, "the body is not JSON")
    if not isinstance(body, dict) or body.get("profile") not in PROFILES:
        return error(400, f'give {{"profile": one of {", ".join(PROFILES)}, "ids": [...] or "all": true}}')
    ids, every = body.get("ids"), body.get("all") is True
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        return error(400, '"ids" must be a list of instance ids (strings)')
    if every == bool(ids):
        return error(400, 'give "ids" (a list of instance ids) or "all": true, not both')
    if ids and len(set(ids)) > MAX_IDS:
        return error(400, f"at most {MAX_IDS} ids at once")
    try:
        resolved = request.app.state.config().resolve({"profile": body["profile"]})
    except KasError as exc:
        return error(400, str(exc))

    wanted: list[str] = list(dict.fromkeys(str(i) for i in ids or []))  # each once, in order

    def act(registry: Registry) -> Any:
        from kas.status import FINISHED

        chosen = (
            [i for i in registry.instances(include_finished=False) if i.status not in FINISHED]
            if every
            else [_find(registry, i) for i in wanted]
        )
        return [apply_profile(registry, inst, resolved).to_json() for inst in chosen]

    try:
        done = await in_thread(act)
    except LookupError as exc:
        return error(404, f"no instance {exc.args[0]!r}")
    except KasError as exc:
        return error(409, str(exc))
    request.app.state.changed.set()
    return JSONResponse(done)


async def profile(request: Request) -> Response:
    from kas.config import find_config, load_config
    from kas.launch.prepare import prepare

    directory = Path(request.query_params.get("dir") or request.app.state.cwd)
    if not directory.is_absolute() or not directory.is_dir():
        return error(400, f"dir must be an existing absolute directory, not {str(directory)!r}")
    try:
        config = await asyncio.to_thread(lambda: load_config(find_config(directory.resolve())))
        resolved = config.resolve()
    except KasError as exc:
        return error(400, str(exc))
    prepared = prepare(resolved, [], {})
    return JSONResponse(
        {
            "profile": resolved.name,
            "settings": resolved.settings.to_dict(),
            "sources": dict(resolved.sources),
            "env": prepared.env,
            "wrapper": prepared.prefix,
            "config_path": str(config.path) if config.path else None,
        }
    )


def snapshot(registry: Registry) -> dict[str, dict[str, Any]]:
    """The agents that have not finished, as the event stream compares them from one look to the next
    (finished rows are not read at every look: with a thousand of them that would be most of the work)."""
    from kas.instances import listing

    return {v.inst.id: _row(v) for v in listing(registry)}


def _row(view: Any) -> dict[str, Any]:
    return {
        "id": view.inst.id,
        "name": view.inst.name,
        "status": view.status,
        "exit_status": view.inst.exit_status,
        "resource_profile": view.inst.resource_profile,
        "applied_at": view.inst.applied_at,
        "telemetry": view.telemetry,
    }


def ended(registry: Registry, ids: list[str]) -> list[dict[str, Any]]:
    """How the agents that left the running list ended."""
    from kas.instances import LiveView

    rows = [registry.get(i) for i in ids]
    return [_row(LiveView(r, r.status)) for r in rows if r is not None]


async def events(request: Request) -> Response:
    """Server-Sent Events: ``started``, ``finished``, ``profile_applied`` as they happen (within one look,
    ``TICK``), and a ``telemetry`` tick with every running agent's figures at each look."""

    async def stream() -> AsyncIterator[str]:
        before = await in_thread(snapshot)
        yield ": kas events\n\n"
        exiting = request.app.state.exiting
        while not exiting() and not await request.is_disconnected():
            changed = request.app.state.changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), TICK)
            changed.clear()
            now = await in_thread(snapshot)
            for inst_id, row in now.items():
                old = before.get(inst_id)
                if row["status"] not in ("pending", "starting") and (
                    old is None or old["status"] in ("pending", "starting")
                ):
                    yield _event("started", row)
                if old is not None and row["applied_at"] != old["applied_at"]:
                    yield _event("profile_applied", row)
            gone = [i for i in before if i not in now]
            for row in await in_thread(functools.partial(ended, ids=gone)) if gone else []:
                yield _event("finished", row)
            yield _event("telemetry", {"instances": list(now.values())})
            before = now

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-store"})


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


def _op(summary: str, *params: str, body: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}}}
    if params:
        op["parameters"] = [{"name": p, "in": "path" if p == "inst_id" else "query"} for p in params]
        for parameter in op["parameters"]:
            parameter["required"] = parameter["in"] == "path"
            parameter["schema"] = {"type": "string"}
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
    return op


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "kas", "version": "1"},
    "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    "security": [{"token": []}],
    "paths": {
        "/api/v1/instances": {"get": _op("Agents with resource_profile, live priority and telemetry", "all")},
        "/api/v1/instances/{inst_id}": {"get": _op("One agent with its process tree", "inst_id")},
        "/api/v1/instances/{inst_id}/log": {"get": _op("The end of an agent's log", "inst_id", "tail")},
        "/api/v1/instances/{inst_id}/stop": {"post": _op("Stop an agent's whole tree", "inst_id")},
        "/api/v1/profile/apply": {"post": _op("Switch running agents to a profile", body=True)},
        "/api/v1/profile": {"get": _op("The resolved profile for a project directory", "dir")},
        "/api/v1/events": {"get": _op("Server-Sent Events: started, finished, profile_applied, telemetry")},
    },
}


async def root(request: Request) -> Response:
    from starlette.responses import RedirectResponse

    return RedirectResponse("/admin/", status_code=303)


def routes() -> list[Any]:
    return [
        Route("/", root),
        Route("/openapi.json", openapi),
        Route("/api/v1/instances", instances),
        Route("/api/v1/instances/{inst_id}", instance),
        Route("/api/v1/instances/{inst_id}/log", log),
        Route("/api/v1/instances/{inst_id}/stop", stop, methods=["POST"]),
        Route("/api/v1/profile/apply", apply, methods=["POST"]),
        Route("/api/v1/profile", profile),
        Route("/api/v1/events", events),
        Mount("/admin", StaticFiles(directory=ADMIN, html=True)),
    ]
