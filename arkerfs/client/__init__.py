"""Async Python SDK for Arker VMs (the ``@arker-ai/sdk`` surface, in Python, on asyncio or trio).

Example::

    import asyncio                                 # or: import trio ... trio.run(main)
    from arkerfs.client import Arker

    async def main():
        async with Arker() as arker:               # key from ARKER_API_KEY
            vm = await arker.vm("arkuntu").fork(name="hello")
            result = await vm.run("python3 -c 'print(2+2)'")
            print(result.stdout.decode())          # 4
            await vm.sync.write_file("/home/user/data.csv", "a,b\\n1,2\\n")
            print(await vm.sync.read_file("/home/user/data.csv"))
            await vm.delete()

    asyncio.run(main())

Every failure is an ``ArkerError`` with ``.code``, ``.message`` and ``.status``; common codes
have subclasses (``NotFoundError``, ``VmBusyError``, ...). See docs/SDK.md for the full guide.
"""

from arkerfs.client.arker import VM, Arker
from arkerfs.client.batchwrite import WriteFilesError
from arkerfs.client.errors import (
    ArkerError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedError,
    VmBusyError,
)
from arkerfs.client.models import RunResult, VmList, VmSummary
from arkerfs.client.retry import RetryPolicy
from arkerfs.client.sync import RemoteFile, Sync

__all__ = [
    "VM",
    "Arker",
    "ArkerError",
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "RemoteFile",
    "RetryPolicy",
    "RunResult",
    "Sync",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedError",
    "VmBusyError",
    "VmList",
    "VmSummary",
    "WriteFilesError",
]
