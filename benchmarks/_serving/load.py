"""The load generator: N keep-alive HTTP/1.1 connections, each sending its next request as
soon as the previous answer is in (closed loop), for a fixed time.

Written on bare asyncio protocols rather than httpx/aiohttp because it shares two cores with
the server under test: requests are encoded once, up front, and an answer is parsed only as
far as the status line, ``Content-Length`` (or chunked framing) and ``Connection: close``.
Flat out (against the do-nothing server below) that is 30-60 microseconds of CPU a request,
over 10,000 req/s at 8 connections on this machine. `run` reports its own CPU time so every
table shows what it cost, and `calibrate` in `benchmarks/serving` measures its ceiling.

A request counts as an error when the status is not 2xx, the connection breaks or it takes
longer than ``timeout`` seconds; errors are not in the latency figures.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Sample:
    """What one timed run measured."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0  # seconds from the start to the last answer
    client_cpu: float = 0.0  # CPU seconds this process spent

    def add_error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def extend(self, other: Sample) -> None:
        self.latencies.extend(other.latencies)
        self.elapsed += other.elapsed
        self.client_cpu += other.client_cpu
        for kind, count in other.error_kinds.items():
            self.errors += count
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count


def encode_requests(url: str, bodies: Sequence[bytes]) -> list[bytes]:
    """Complete ``POST`` requests (head and body) for ``url``, one per body."""
    parts = urlsplit(url)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\nAccept: application/json\r\n"
    ).encode()
    return [head + b"Content-Length: %d\r\n\r\n" % len(body) + body for body in bodies]


class _Broken(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(_Broken("connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self._complete()

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def _complete(self) -> None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = b"close" in value
        start = end + 4
        if chunked:
            body, used = _dechunk(buffer, start)
            if body is None:
                return
        elif length >= 0:
            if len(buffer) < start + length:
                return
            body, used = bytes(buffer[start : start + length]), start + length
        else:
            return  # body until close: not supported, times out (counted as an error)
        del buffer[:used]
        assert self.waiter is not None
        self.waiter.set_result((status, body, close))


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes | None, int]:
    body = bytearray()
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None, 0
        size = int(bytes(buffer[pos:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None, 0
            return bytes(body), trailer_end + 4
        if len(buffer) < line_end + 2 + size + 2:
            return None, 0
        body += buffer[line_end + 2 : line_end + 2 + size]
        pos = line_end + 2 + size + 2


async def _connect(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Connection, host, port)
    return protocol


async def _client(
    host: str,
    port: int,
    requests: Sequence[bytes],
    offset: int,
    deadline: float,
    timeout: float,
    sample: Sample,
) -> None:
    perf = time.perf_counter
    latencies = sample.latencies
    connection: _Connection | None = None
    try:
        for request in itertools.islice(itertools.cycle(requests), offset, None):
            started = perf()
            if started >= deadline:
                break
            if connection is None or connection.closed:
                try:
                    connection = await _connect(host, port)
                except OSError as exc:
                    sample.add_error(f"connect: {type(exc).__name__}")
                    await asyncio.sleep(0.05)  # the server is gone; retry until the deadline
                    continue
                started = perf()
            try:
                async with asyncio.timeout(timeout):
                    status, _, close = await connection.send(request)
            except TimeoutError:
                sample.add_error("timeout")
                _close(connection)
                connection = None
                continue
            except (_Broken, OSError) as exc:
                sample.add_error(type(exc).__name__)
                _close(connection)
                connection = None
                continue
            finished = perf()
            if 200 <= status < 300:
                latencies.append(finished - started)
            else:
                sample.add_error(f"HTTP {status}")
            if close:
                _close(connection)
                connection = None
    finally:
        if connection is not None:
            _close(connection)


def _close(connection: _Connection) -> None:
    if connection.transport is not None:
        connection.transport.close()


async def _run(
    url: str, requests: Sequence[bytes], clients: int, seconds: float, timeout: float
) -> Sample:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sample = Sample()
    started = time.perf_counter()
    deadline = started + seconds
    spread = max(1, len(requests) // clients)
    await asyncio.gather(
        *(
            _client(host, port, requests, i * spread, deadline, timeout, sample)
            for i in range(clients)
        )
    )
    # Requests in flight at the deadline are waited for and counted.
    sample.elapsed = time.perf_counter() - started
    return sample


def run(
    url: str,
    requests: Sequence[bytes],
    *,
    clients: int,
    seconds: float,
    timeout: float = 30.0,
) -> Sample:
    """Run ``clients`` closed-loop connections against ``url`` for ``seconds``.

    Each connection cycles through ``requests`` (from its own starting point). The garbage
    collector is paused for the run so its pauses do not land in the latencies.
    """
    cpu = time.process_time()
    gc.disable()
    try:
        sample = asyncio.run(_run(url, requests, clients, seconds, timeout))
    finally:
        gc.enable()
    sample.client_cpu = time.process_time() - cpu
    return sample


# --- a server that does nothing, to measure the generator's own ceiling ------------------


_NOTHING = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Nothing(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        # Requests are framed by Content-Length; the body here is tiny and ends the request.
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self.transport.write(_NOTHING)


async def _serve_nothing(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Nothing, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve_nothing(int(sys.argv[1])))
