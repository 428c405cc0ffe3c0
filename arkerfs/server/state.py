"""The objects one running server shares between its routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from arkerfs.server.config import ServerConfig
from arkerfs.server.faults import Faults, Stats
from arkerfs.server.runner import Runner
from arkerfs.server.snapshots import Snapshots
from arkerfs.server.store import VmStore
from arkerfs.server.tokens import Signer
from arkerfs.server.uploads import Uploads


@dataclass
class ServerState:
    config: ServerConfig
    store: VmStore
    runner: Runner
    uploads: Uploads
    signer: Signer
    faults: Faults
    stats: Stats = field(default_factory=Stats)
    snapshots: Snapshots = field(default_factory=Snapshots)


# Scope key under which ``begin`` leaves an after-effect fault for ``app.Gate`` to answer.
FAIL_AFTER_KEY = "arkerfs.fail_after"


def server(request: Request) -> ServerState:
    return request.app.state.server


async def begin(request: Request, route: str) -> ServerState:
    """Count the call and apply faults: the first step of every API and blob handler.

    Nothing before this point may have side effects, so a faulted request never executed.
    """
    state = server(request)
    state.stats.calls[route] += 1
    after = await state.faults.apply(route)
    if after is not None:  # after_effect fault: the handler runs, the Gate swaps its response
        request.scope[FAIL_AFTER_KEY] = after
    return state
