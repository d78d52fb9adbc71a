"""A reverse proxy that caps the request rate, as throttled registries do (ECR's per-action TPS
quotas, GHCR's limiter, Harbor under load, Docker Hub's abuse limiter).

Every request takes a token from a bucket of `burst` tokens refilled at `rate` per second; a
request that finds the bucket empty is answered `429 TOOMANYREQUESTS` (with `Retry-After`, the
whole seconds until a token is back, when asked) without reaching the registry, and spends no
token. HTTP/1.1 with keep-alive, plain HTTP on both sides, bodies streamed (Content-Length or
chunked). Standard library only (asyncio), run in a thread of the benchmark.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

REFUSAL = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"rate exceeded"}]}'


class Bucket:
    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = float(max(1, burst))
        self.tokens = self.burst
        self.last = time.monotonic()

    def take(self) -> float | None:
        """None when a token was taken, else the seconds until one is back."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate


class RateCapProxy:
    """`start()` listens on 127.0.0.1 (port in `.port`) and forwards to `upstream` (host:port)."""

    def __init__(self, upstream: str, rate: float, burst: int, retry_after: bool):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.bucket = Bucket(rate, burst)
        self.retry_after = retry_after
        self.passed = 0
        self.refused = 0
        self.lock = threading.Lock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(5)
        self._loop = None

    def reset(self) -> None:
        with self.lock:
            self.passed = 0
            self.refused = 0
            self.bucket = Bucket(self.bucket.rate, int(self.bucket.burst))

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.passed, self.refused

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    break
                line, headers, raw = head
                method = line.split(b" ", 1)[0].upper()
                with self.lock:
                    wait = self.bucket.take()
                    if wait is None:
                        self.passed += 1
                    else:
                        self.refused += 1
                if wait is not None:
                    await _drain_body(reader, headers)
                    extra = b""
                    if self.retry_after:
                        extra = b"Retry-After: %d\r\n" % max(1, math.ceil(wait))
                    writer.write(
                        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                        + extra
                        + b"Content-Length: %d\r\n\r\n" % len(REFUSAL)
                        + REFUSAL
                    )
                    await writer.drain()
                    continue
                if up is None:
                    up = await asyncio.open_connection(*self.upstream, limit=1 << 20)
                ur, uw = up
                uw.write(raw)
                await _copy_body(reader, uw, headers)
                await uw.drain()
                resp = await _read_head(ur)
                if resp is None:
                    break
                rline, rheaders, rraw = resp
                writer.write(rraw)
                status = int(rline.split(b" ")[1])
                if method != b"HEAD" and status not in (204, 304) and not (100 <= status < 200):
                    await _copy_body(ur, writer, rheaders, until_close=True)
                await writer.drain()
                if rheaders.get(b"connection", b"").lower() == b"close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            pass
        finally:
            if up is not None:
                up[1].close()
            writer.close()


async def _read_head(reader: asyncio.StreamReader):
    """(first line, {lowercase name: value}, raw bytes) of a request or response head."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = raw.split(b"\r\n")
    headers = {}
    for h in lines[1:]:
        if b":" in h:
            k, v = h.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers, raw


async def _copy_body(src, dst, headers, until_close: bool = False) -> None:
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        while True:
            size_line = await src.readuntil(b"\r\n")
            dst.write(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:
                    trailer = await src.readuntil(b"\r\n")
                    dst.write(trailer)
                    if trailer == b"\r\n":
                        return
            dst.write(await src.readexactly(size + 2))
            await dst.drain()
    elif b"content-length" in headers:
        left = int(headers[b"content-length"])
        while left > 0:
            piece = await src.read(min(left, 1 << 20))
            if not piece:
                raise ConnectionError("body cut short")
            dst.write(piece)
            left -= len(piece)
            await dst.drain()
    elif until_close:
        while True:
            piece = await src.read(1 << 20)
            if not piece:
                return
            dst.write(piece)
            await dst.drain()


async def _drain_body(src, headers) -> None:
    class Sink:
        def write(self, _):
            pass

        async def drain(self):
            pass

    await _copy_body(src, Sink(), headers)
