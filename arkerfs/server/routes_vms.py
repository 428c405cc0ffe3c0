"""VM routes: list, fork (by id and by name), delete and run (PROTOCOL.md 4.1-4.4).

Each handler counts its call, then lets injected faults act, and only then touches anything,
so a faulted request never has a side effect.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from arkerfs.protocol import SERVER_MAX_RUN_BODY
from arkerfs.server.bodies import MAX_SMALL_BODY, read_json
from arkerfs.server.errors import ApiError
from arkerfs.server.runner import session_key
from arkerfs.server.state import begin
from arkerfs.server.store import SORT_KEYS

MAX_NAME_CHARS = 256


def _int_param(request: Request, name: str, default: int, lo: int, hi: int | None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError("bad_request", f"{name} must be an integer") from None
    if value < lo or (hi is not None and value > hi):
        bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise ApiError("bad_request", f"{name} must be {bound}")
    return value


async def list_vms(request: Request) -> JSONResponse:
    state = await begin(request, "list")
    limit = _int_param(request, "limit", 25, 1, 100)
    offset = _int_param(request, "offset", 0, 0, None)
    sort = request.query_params.get("sort", "-created_at")
    if sort not in SORT_KEYS:
        raise ApiError("bad_request", f"sort must be one of {', '.join(SORT_KEYS)}")
    vms, total = state.store.list(q=request.query_params.get("q"), sort=sort, limit=limit, offset=offset)
    return JSONResponse({"ok": True, "items": [vm.item() for vm in vms], "total": total})


def _fork_name(body: dict) -> str | None:
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
        raise ApiError("bad_request", f"name must be a string of at most {MAX_NAME_CHARS} characters")
    return name


async def fork_by_id(request: Request) -> JSONResponse:
    body = await read_json(request, MAX_SMALL_BODY)
    state = await begin(request, "fork")
    vm = await state.store.fork(request.path_params["vm_id"], _fork_name(body))
    return JSONResponse({"ok": True, **vm.item()})


async def fork_by_name(request: Request) -> JSONResponse:
    body = await read_json(request, MAX_SMALL_BODY)
    state = await begin(request, "fork")
    source = body.get("from")
    if not isinstance(source, str) or not source:
        raise ApiError("bad_request", "from must name the VM to fork")
    name = _fork_name(body)
    vm = await state.store.fork(state.store.by_name(source).vm_id, name)
    return JSONResponse({"ok": True, **vm.item()})


async def delete_vm(request: Request) -> JSONResponse:
    state = await begin(request, "delete")
    vm_id = request.path_params["vm_id"]
    await state.store.delete(vm_id)
    state.runner.forget_vm(vm_id)
    state.uploads.forget_vm(vm_id)
    state.snapshots.forget_vm(vm_id)
    return JSONResponse({"ok": True, "deleted": True})


def _timeout(body: dict) -> float | None:
    value = body.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ApiError("bad_request", "timeout must be a non-negative number of seconds")
    return float(value)


async def run(request: Request) -> JSONResponse:
    body = await read_json(request, SERVER_MAX_RUN_BODY)
    state = await begin(request, "run")
    command = body.get("command")
    if not isinstance(command, str):
        raise ApiError("bad_request", "command must be a string")
    if "\x00" in command:
        raise ApiError("bad_request", "command must not contain NUL")
    key = session_key(body.get("session_id"))
    timeout = _timeout(body)
    if state.faults.run_stall_ms:  # test hook: a command that hangs (see faults.py)
        command = f"sleep {state.faults.run_stall_ms / 1000:.3f}\n{command}"
    vm_id = request.path_params["vm_id"]
    home = state.store.home(vm_id)
    with state.runner.claim(vm_id, key) as session:
        result = await state.runner.run(home, session, command, timeout)
    reply = {
        "ok": True,
        **result.stdout.field("stdout"),
        **result.stderr.field("stderr"),
        "exit_code": result.exit_code,
        "duration_ms": result.duration_ms,
        "session_id": key,
        "cwd": result.cwd,
    }
    if result.timed_out:
        reply["timed_out"] = True
    return JSONResponse(reply)
