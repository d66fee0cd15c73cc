"""A TCP proxy on 127.0.0.1 that injects faults in front of a real server
(PostgreSQL, the loopback git server), for the fault suite:

    with FaultProxy("127.0.0.1", pg_port) as proxy:   # listens on proxy.port
        proxy.delay = 3.0        # every reply of the server arrives 3 s late
        proxy.mode = "hang"      # accept, read, never answer (a blackholed host)
        proxy.mode = "refuse"    # close every new connection at once (host down)
        proxy.mode = "http500"   # answer every HTTP request with 500
        proxy.mode = "pass"      # back to normal
        proxy.cut()              # drop every open connection

`delay` applies to each chunk the server sends (one reply of a request /
response protocol), in order and pipelined: two replies sent 1 ms apart
arrive 1 ms apart, both `delay` late. The mode is read when a connection
opens (`hang` also stalls connections already open).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType
from typing import Literal, Self

Mode = Literal["pass", "hang", "refuse", "http500"]

_HTTP_500 = (
    b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 22\r\n"
    b"Connection: close\r\n\r\ninjected server error\n"
)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0, mode: Mode = "pass") -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.mode: Mode = mode
        self.port = 0
        self.connections = 0  # accepted since start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def cut(self) -> None:
        """Drop every open connection (both sides see a reset)."""
        if self._loop is None:
            return

        async def abort() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(abort(), self._loop).result(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            if self.mode == "refuse":
                return
            if self.mode == "hang":
                while await reader.read(65536):
                    pass  # read and discard, never answer
                return
            if self.mode == "http500":
                await reader.read(65536)
                writer.write(_HTTP_500)
                await writer.drain()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    self._pump(reader, up_writer, delayed=False), self._pump(up_reader, writer, delayed=True)
                )
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, delayed: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                while self.mode == "hang":  # noqa: ASYNC110 - set from the test thread
                    await asyncio.sleep(0.1)
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
            with contextlib.suppress(Exception):
                dst.write_eof()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await src.read(65536)
                queue.put_nowait((time.monotonic() + (self.delay if delayed else 0.0), data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
