"""Debian's docker-registry (CNCF distribution 2.8) on 127.0.0.1, and its access log.

A `Registry` owns a directory holding its config, its logs and any number of storage dirs. It can
be restarted on a fresh storage dir (a cold target) or on an existing one (a warm target); the
access log (gorilla combined format, the registry's stdout) is appended to one file across
restarts, so a byte offset taken before a run marks where that run's requests start.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass

REGISTRY_BIN = "/usr/bin/docker-registry"

# `127.0.0.1 - - [24/Nov/2026:19:46:02 +0000] "HEAD /v2/x/manifests/y HTTP/1.1" 404 91 "" "curl/7.88.1"`
_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+)[^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+|-) "[^"]*" "(?P<ua>[^"]*)"'
)
_V2 = re.compile(r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs)/(?P<ref>.*)$")


@dataclass(frozen=True)
class Access:
    """One request, as the registry logged it."""

    method: str
    path: str
    query: str
    status: int
    size: int
    user_agent: str
    repo: str | None
    kind: str | None  # manifests, blobs, uploads, tags, or None (e.g. /v2/)
    ref: str | None

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PATCH", "PUT", "DELETE")


def parse_line(line: str) -> Access | None:
    """One access-log line, as `Access::parse` in tests/common/access.rs reads it (both are
    tested against tests/fixtures/registry-2.8-access.log); None for any other line."""
    m = _LINE.match(line)
    if not m:
        return None
    uri = m.group("uri")
    path, _, query = uri.partition("?")
    repo = kind = ref = None
    if "/blobs/uploads/" in path and path.startswith("/v2/"):
        repo = path[len("/v2/") : path.index("/blobs/uploads/")]
        kind = "uploads"
        ref = path[path.index("/blobs/uploads/") + len("/blobs/uploads/") :]
    elif path.startswith("/v2/") and path.endswith("/tags/list"):
        repo, kind, ref = path[len("/v2/") : -len("/tags/list")], "tags", ""
    else:
        v = _V2.match(path)
        if v:
            repo, kind, ref = v.group("repo"), v.group("kind"), v.group("ref")
    size = m.group("size")
    return Access(
        method=m.group("method"),
        path=path,
        query=query,
        status=int(m.group("status")),
        size=0 if size == "-" else int(size),
        user_agent=m.group("ua"),
        repo=repo,
        kind=kind,
        ref=ref,
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the harness dies, even if it is killed outright."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(storage: str, port: int, tls: tuple[str, str, str] | None = None) -> str:
    # As the integration tests: no blob descriptor cache (it can hide on-disk state), deletes on,
    # upload purging off, access log on (stdout).
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: mirrorsync-bench-{port}\n"
        + (f"  tls:\n    certificate: {tls[1]}\n    key: {tls[2]}\n" if tls else "")
    )


class Registry:
    """A docker-registry process that can be (re)started on a given storage dir."""

    def __init__(self, name: str, workdir: str):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.storage: str | None = None
        self.tls: tuple[str, str, str] | None = None  # (CA, certificate, key): serve HTTPS
        self.access_log = os.path.join(self.dir, "access.log")
        self.app_log = os.path.join(self.dir, "registry.log")
        open(self.access_log, "ab").close()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, storage: str) -> None:
        """Starts on `storage` (created if missing), keeping the last port when it is free."""
        self.stop()
        os.makedirs(storage, exist_ok=True)
        self.storage = storage
        last_err = ""
        for attempt in range(6):
            port = self.port if (self.port and attempt == 0) else free_port()
            cfg = os.path.join(self.dir, "config.yml")
            with open(cfg, "w") as f:
                f.write(_config(storage, port, self.tls))
            log_start = os.path.getsize(self.app_log) if os.path.exists(self.app_log) else 0
            out = open(self.access_log, "ab")
            err = open(self.app_log, "ab")
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", cfg],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            out.close()
            err.close()
            self.proc, self.port = proc, port
            if self._wait_ready(log_start):
                return
            with open(self.app_log, "rb") as f:
                f.seek(log_start)
                last_err = f.read().decode(errors="replace")[-2000:]
            self.stop()
        raise RuntimeError(f"{self.name}: docker-registry did not start; last log:\n{last_err}")

    def _wait_ready(self, log_start: int) -> bool:
        deadline = time.monotonic() + 20
        needle = f"listening on 127.0.0.1:{self.port}".encode()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with open(self.app_log, "rb") as f:
                f.seek(log_start)
                listening = needle in f.read()
            if listening:
                try:
                    # /v2/ is not counted: every count is taken between two marks.
                    if self.tls:
                        ctx = ssl.create_default_context(cafile=self.tls[0])
                        urllib.request.urlopen(f"https://{self.host}/v2/", timeout=2, context=ctx).read()
                    else:
                        urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2).read()
                    return True
                except Exception:
                    pass
            time.sleep(0.03)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the registry process so far (0 when not running)."""
        if self.proc is None:
            return 0.0
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # fields[0] is state (field 3); utime and stime are fields 14 and 15.
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def settle(self, quiet: float = 0.2, limit: float = 10.0) -> None:
        """Waits until the access log has not grown for `quiet` seconds: the registry writes a
        line just after sending the response, so a client can finish before its last line lands."""
        deadline = time.monotonic() + limit
        last = os.path.getsize(self.access_log)
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.025)
            now = os.path.getsize(self.access_log)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                return

    def mark(self) -> int:
        """Settles the log and returns its size: pass it to `since`. (The previous run's lines
        were already waited for; what may still land is the harness's own, which is filtered.)"""
        self.settle(quiet=0.05)
        return os.path.getsize(self.access_log)

    def since(self, mark: int, settle: bool = True) -> list[Access]:
        if settle:
            self.settle()
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return [a for a in (parse_line(l) for l in text.splitlines()) if a is not None]
