"""A far-away upstream on loopback: a TCP proxy adding round-trip time and a shared downlink cap.

    python3 -m mirrorbench.wanproxy --upstream 127.0.0.1:5000 --rtt-ms 80 --downlink-mbit 200

It relays bytes (plain HTTP or TLS alike: it never looks inside beyond the first byte) and shapes
them as a long link would:

- propagation: every chunk takes RTT/2 each way, so each request/response exchange costs one
  RTT, and a new connection one more before its first byte (the TCP handshake);
- the downlink (upstream to client) is one bottleneck shared by every connection, served
  round-robin in small quanta (fair queueing, as Linux's default fq_codel does), so a HEAD's
  answer does not wait behind a big blob;
- each connection has a window of bytes in flight (read from upstream and not yet acknowledged,
  i.e. delivered plus RTT/2), like TCP's; a full window stops reading from upstream. The default
  window is 1.25 x the bandwidth-delay product: one connection alone can fill the link, with a
  queue of a quarter RTT at most (well-tuned TCP buffers, a shallow bottleneck queue).

Not modelled: TCP slow start and loss (a new connection gets its share at once) and the uplink
(requests are tiny; they only pay the propagation delay).

`--no-window --queue fifo` gives the second model (the profiles named `...-nowindow`): no window
at all, and one first-in first-out queue at the bottleneck in place of the fair one. The proxy reads whatever the
upstream sends at once and each chunk waits its turn behind every byte read before it, then RTT/2:
a far link with a deep buffer at its bottleneck and senders that do not hold back, where an
answer started after a big blob waits for that blob's queued bytes to cross first. `--no-window`
alone keeps the fair queue: each connection's bytes wait in their own queue, served in turn.

Figures are kept in memory and served on a control port: one line `stats` answered with a JSON
object (connections opened, TLS ClientHellos, delivered bytes per 100 ms slot keyed by
CLOCK_MONOTONIC, which every process on the machine shares).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import socket
import sys
import time

CHUNK = 256 * 1024  # read size from either side
QUANTUM = 16 * 1024  # bytes per turn of one connection at the shared bottleneck
SLOT = 0.1  # timeline resolution, seconds
UPSTREAM_RCVBUF = 64 * 1024
SLACK = 0.02  # how far the bottleneck's clock may fall behind real time (timer lateness)


class Stats:
    def __init__(self):
        self.connections = 0
        self.conn_times: list[float] = []
        self.tls_hellos = 0
        self.tls_times: list[float] = []
        self.down_bytes = 0
        self.up_bytes = 0
        self.slots: collections.Counter = collections.Counter()  # int(monotonic / SLOT) -> bytes

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "connections": self.connections,
                "conn_times": self.conn_times,
                "tls_hellos": self.tls_hellos,
                "tls_times": self.tls_times,
                "down_bytes": self.down_bytes,
                "up_bytes": self.up_bytes,
                "slot": SLOT,
                "slots": {str(k): v for k, v in self.slots.items()},
            }
        ).encode()


class Link:
    """The shared downlink: a virtual clock advanced by every quantum sent, round-robin over the
    connections that have bytes waiting."""

    def __init__(self, rate: float, stats: Stats, fifo: bool = False):
        self.rate = rate  # bytes/s; 0 = unlimited
        self.stats = stats
        # Fair: each pipe with bytes waiting once, served a quantum per turn. FIFO: one entry per
        # chunk read, served whole and in the order read.
        self.fifo = fifo
        self.active: collections.deque = collections.deque()
        self.wake = asyncio.Event()
        self.clock = 0.0

    def ready(self, pipe: "Pipe") -> None:
        if self.fifo:
            pipe.queued_at_link = True
            self.active.append(pipe)
            self.wake.set()
        elif not pipe.queued_at_link:
            pipe.queued_at_link = True
            self.active.append(pipe)
            self.wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.active:
                self.wake.clear()
                await self.wake.wait()
                continue
            pipe = self.active.popleft()
            data = pipe.take(CHUNK if self.fifo else QUANTUM)
            now = loop.time()
            if self.rate:
                # A late wake-up (timer granularity) is made up for by sending the next quanta
                # without waiting, up to SLACK behind: the average rate stays the set one.
                self.clock = max(self.clock, now - SLACK) + len(data) / self.rate
                if self.clock - now > 0.001:
                    await asyncio.sleep(self.clock - now)
                sent = self.clock
            else:
                sent = now
            pipe.transmitted(data, sent)
            if self.fifo:
                pipe.queued_at_link = bool(pipe.backlog)
            elif pipe.backlog:
                self.active.append(pipe)
            else:
                pipe.queued_at_link = False


class Pipe:
    """One direction of one connection: read, (bottleneck), propagation delay, write."""

    def __init__(self, reader, writer, delay: float, first_delay: float, link: Link | None, window: int, stats: Stats, down: bool):
        self.reader, self.writer = reader, writer
        self.delay, self.first_delay = delay, first_delay
        self.link, self.window, self.stats, self.down = link, window, stats, down
        self.backlog: collections.deque = collections.deque()  # waiting for the bottleneck
        self.backlog_bytes = 0
        self.queued_at_link = False
        self.flight: collections.deque = collections.deque()  # (due, bytes | None for EOF)
        self.in_window = 0
        self.room = asyncio.Event()
        self.room.set()
        self.arrived = asyncio.Event()
        self.last_due = 0.0

    def take(self, n: int) -> bytes:
        data = self.backlog[0]
        if len(data) <= n:
            self.backlog.popleft()
        else:
            self.backlog[0] = data[n:]
            data = data[:n]
        self.backlog_bytes -= len(data)
        return data

    def transmitted(self, data, at: float) -> None:
        due = max(at + self.delay, self.last_due)
        self.last_due = due
        self.flight.append((due, data))
        self.arrived.set()

    async def pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while True:
            await self.room.wait()
            data = await self.reader.read(CHUNK)
            if not data:
                if self.link is not None:
                    # EOF after the last byte has crossed the bottleneck: the link may hold a
                    # quantum taken from the backlog and not transmitted yet (queued_at_link).
                    while self.backlog or self.queued_at_link:
                        await asyncio.sleep(0.005)
                self.transmitted(None, loop.time())
                return
            if first and not self.down and data[:1] == b"\x16":
                self.stats.tls_hellos += 1
                self.stats.tls_times.append(time.monotonic())
            self.in_window += len(data)
            if self.in_window >= self.window:
                self.room.clear()
            if self.link is not None:
                self.backlog.append(data)
                self.backlog_bytes += len(data)
                self.link.ready(self)
            else:
                extra = self.first_delay if first else 0.0
                self.transmitted(data, loop.time() + extra)
            first = False

    async def pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.flight:
                self.arrived.clear()
                await self.arrived.wait()
            due, data = self.flight.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                try:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                except OSError:
                    pass
                return
            self.writer.write(data)
            await self.writer.drain()
            n = len(data)
            if self.down:
                self.stats.down_bytes += n
                self.stats.slots[int(time.monotonic() / SLOT)] += n
            else:
                self.stats.up_bytes += n
            # The window reopens when the acknowledgement is back, half an RTT after delivery.
            loop.call_later(self.delay, self.release, n)

    def release(self, n: int) -> None:
        self.in_window -= n
        if self.in_window < self.window:
            self.room.set()


class Proxy:
    def __init__(self, upstream: tuple[str, int], rtt: float, rate: float, window: int, fifo: bool = False):
        self.upstream = upstream
        self.rtt, self.window = rtt, window
        self.stats = Stats()
        self.link = Link(rate, self.stats, fifo)

    async def handle(self, creader, cwriter) -> None:
        self.stats.connections += 1
        self.stats.conn_times.append(time.monotonic())
        for w in (cwriter,):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # A small receive buffer towards upstream: bytes the link has not taken yet wait in
            # the server's send buffer (as they would at the far end), not in a big loopback
            # buffer here that no real path has.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UPSTREAM_RCVBUF)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.upstream)
            ureader, uwriter = await asyncio.open_connection(sock=sock, limit=CHUNK)
        except OSError:
            cwriter.close()
            return
        usock = uwriter.get_extra_info("socket")
        if usock is not None:
            usock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        half = self.rtt / 2
        # The client's connect() returned at once on loopback; over the link its first byte
        # would leave one RTT later (SYN, SYN-ACK) and arrive half an RTT after that.
        up = Pipe(creader, uwriter, half, self.rtt, None, 1 << 30, self.stats, down=False)
        down = Pipe(ureader, cwriter, half, 0.0, self.link, self.window, self.stats, down=True)
        tasks = [asyncio.create_task(p) for p in (up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out())]
        try:
            await asyncio.gather(*tasks)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            for w in (cwriter, uwriter):
                try:
                    w.close()
                except OSError:
                    pass

    async def control(self, reader, writer) -> None:
        try:
            line = await reader.readline()
            if line.strip() == b"stats":
                writer.write(self.stats.as_json() + b"\n")
            elif line.strip() == b"reset":
                self.stats.__init__()
                self.link.stats = self.stats
                writer.write(b"{}\n")
            await writer.drain()
        finally:
            writer.close()


async def serve(args) -> None:
    host, _, port = args.upstream.rpartition(":")
    rate = args.downlink_mbit * 1e6 / 8 if args.downlink_mbit else 0.0
    if args.no_window:
        window = 1 << 40
    elif args.window_kib:
        window = args.window_kib * 1024
    else:
        window = max(64 * 1024, int(1.25 * rate * args.rtt_ms / 1000)) if rate else 4 << 20
    proxy = Proxy((host, int(port)), args.rtt_ms / 1000.0, rate, window, fifo=args.queue == "fifo")
    asyncio.get_running_loop().create_task(proxy.link.run())
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port, limit=CHUNK, backlog=512)
    ctl = await asyncio.start_server(proxy.control, "127.0.0.1", args.control_port)
    ports = (server.sockets[0].getsockname()[1], ctl.sockets[0].getsockname()[1])
    print(f"listening on 127.0.0.1:{ports[0]} control 127.0.0.1:{ports[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="wanproxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="host:port to relay to")
    p.add_argument("--port", type=int, default=0, help="listening port (default: any free one)")
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--rtt-ms", type=float, default=80.0)
    p.add_argument("--downlink-mbit", type=float, default=200.0, help="shared downlink; 0 = unlimited")
    p.add_argument("--window-kib", type=int, default=0, help="bytes in flight per connection (default: 1.25 x bandwidth x RTT, at least 64 KiB)")
    p.add_argument("--no-window", action="store_true", help="no window per connection: read from upstream whatever it sends")
    p.add_argument("--queue", choices=("fair", "fifo"), default="fair", help="the bottleneck's queue: round-robin over connections (default) or first in, first out")
    args = p.parse_args(argv)
    if args.no_window and args.window_kib:
        p.error("--no-window and --window-kib exclude each other")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
