"""The objects one running server shares between its routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from arkerfs.server.config import ServerConfig
from arkerfs.server.faults import Faults, Stats
from arkerfs.server.runner import Runner
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


def server(request: Request) -> ServerState:
    return request.app.state.server


async def begin(request: Request, route: str) -> ServerState:
    """Count the call and apply faults: the first step of every API and blob handler.

    Nothing before this point may have side effects, so a faulted request never executed.
    """
    state = server(request)
    state.stats.calls[route] += 1
    await state.faults.apply(route)
    return state
