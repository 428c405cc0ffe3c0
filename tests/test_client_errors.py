"""Typed SDK errors against the real local server: one ``ArkerError`` base, a subclass per family."""

from __future__ import annotations

import pickle

import pytest

from arkerfs.client import (
    Arker,
    ArkerError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RetryPolicy,
    UnauthorizedError,
    UnavailableError,
    VmBusyError,
)

ONCE = RetryPolicy(attempts=1)


async def raised(call) -> ArkerError:
    with pytest.raises(ArkerError) as info:
        await call
    return info.value


async def test_server_errors_are_subclasses_that_keep_code_and_status(server, vm, control):
    async with Arker(server.api_key, base_url=server.base_url, list_base_url=server.base_url, retry=ONCE) as arker:
        handle = arker.vm(vm.id)
        err = await raised(handle.sync.read_file("/home/user/missing"))
        assert (type(err), err.code, err.status) == (NotFoundError, "not_found", 404)
        err = await raised(handle.run("x", session_id=[1]))
        assert (type(err), err.code, err.status) == (BadRequestError, "bad_request", 400)
        try:  # (cleared here: the async vm fixture is torn down before ``control``)
            for fail_status, kind, code in [(429, RateLimitedError, "rate_limited"), (409, ConflictError, "conflict"),
                                            (403, ForbiddenError, "forbidden"), (503, UnavailableError, "unavailable")]:
                control.set_faults(fail_rate=1.0, fail_status=fail_status)
                err = await raised(arker.list())
                assert (type(err), err.code, err.status) == (kind, code, fail_status)
            control.set_faults(busy_rate=1.0)
            err = await raised(handle.run("true"))
        finally:
            control.clear_faults()
    assert (type(err), err.code, err.status) == (VmBusyError, "vm_busy", 409)
    assert isinstance(err, ConflictError) and err.never_started
    async with Arker("ark_wrong_key", base_url=server.base_url, list_base_url=server.base_url) as wrong:
        err = await raised(wrong.list())
    assert (type(err), err.code, err.status) == (UnauthorizedError, "unauthorized", 401)


async def test_local_refusals_and_transport_failures_are_typed_too(vm, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(100_000_001)
    err = await raised(vm.sync.write_file("/home/user/big.bin", big))
    assert (type(err), err.code, err.status) == (PayloadTooLargeError, "payload_too_large", 0)
    err = await raised(vm.sync.write_file("/etc/passwd", b"x"))
    assert (type(err), err.code) == (BadRequestError, "bad_request")
    async with Arker("ark_k", base_url="http://127.0.0.1:1", retry=ONCE) as dead:
        err = await raised(dead.vm(vm.id).run("true"))
    assert (type(err), err.code, err.status, err.never_started) == (UnavailableError, "unavailable", 0, True)


def test_construction_by_code_picks_the_subclass_and_survives_pickling():
    err = ArkerError("resource_busy", "held", 409, request_id="req_1", details={"resource": "vm"}, retry_after=2.0)
    assert type(err) is VmBusyError and isinstance(err, ConflictError)
    assert (err.code, err.message, err.status, str(err)) == ("resource_busy", "held", 409, "resource_busy: held")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is VmBusyError
    assert (copy.code, copy.request_id, copy.details, copy.retry_after) == ("resource_busy", "req_1", {"resource": "vm"}, 2.0)
    assert type(ArkerError("unsupported_operation", "no")).__name__ == "UnsupportedError"
    assert type(ArkerError("internal", "boom")) is ArkerError  # codes without a family stay plain
    assert repr(NotFoundError("not_found", "gone", 404)) == "NotFoundError('not_found', 'gone', 404)"
