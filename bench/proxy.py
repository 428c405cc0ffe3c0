"""A loopback TCP proxy that adds a round-trip time: each direction is delayed by half of it.

The delay is latency, not throttling: every chunk is forwarded ``rtt/2`` after it was received,
in order, while later chunks keep arriving, so a bulk transfer still runs at full speed once the
pipe is full. Both arkerfs (HTTP) and sshfs (SSH) go through the same proxy, so they see the
same network.

    with DelayProxy("127.0.0.1", 8600, rtt_ms=20) as proxy:
        ...  # connect to 127.0.0.1:proxy.port

``python -m bench.proxy --target 127.0.0.1:8600 --rtt-ms 20 [--port N]`` runs one standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading

CHUNK = 256 * 1024
# Chunks read ahead of the writer per direction: bounds memory, and at 256 KiB x 256 chunks per
# 25 ms it is never what limits throughput on loopback.
QUEUE_CHUNKS = 256


class DelayProxy:
    """Listens on 127.0.0.1 (``port``, 0 = any free one) and forwards to ``target``.

    Runs its own asyncio loop in a daemon thread; ``start()``/``stop()`` or a ``with`` block.
    """

    def __init__(self, target_host: str, target_port: int, rtt_ms: float, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.one_way = rtt_ms / 2000.0
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle (caller's thread) --

    def start(self) -> "DelayProxy":
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - handed back to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=main, name="delay-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "DelayProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- inside the loop --

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            for w in (down_writer, up_writer):
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipes = [asyncio.ensure_future(self._pipe(down_reader, up_writer)),
                     asyncio.ensure_future(self._pipe(up_reader, down_writer))]
            try:
                # Each direction ends at its EOF (half-close is forwarded); an error in either
                # (one side reset) ends both, as a broken network path would.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except (ConnectionError, OSError):
            pass  # the target refused the connection: close the client's
        except asyncio.CancelledError:
            pass  # the proxy is stopping; ending quietly keeps asyncio from logging the cancel
        finally:
            for w in (down_writer, up_writer):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction: a reader stamps each chunk, a sender releases it one_way later."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def receive() -> None:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + self.one_way, data))
                if not data:  # EOF travels with the same delay as the data before it
                    return

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        receiver = asyncio.ensure_future(receive())
        try:
            await send()
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    with DelayProxy(host, int(port), args.rtt_ms, args.port) as proxy:
        print(f"delay proxy: 127.0.0.1:{proxy.port} -> {args.target}, rtt {args.rtt_ms:g} ms", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
