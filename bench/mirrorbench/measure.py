"""Running a tool under measurement, and reading what it did from the registries' access logs."""

from __future__ import annotations

import os
import resource
import signal
import threading
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

from .client import HARNESS_UA
from .registry import Access, Registry

CLK_TCK = os.sysconf("SC_CLK_TCK")
GNU_TIME = "/usr/bin/time"


def system_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores; steal counts as busy)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Run:
    tool: str
    scenario: str
    round: int
    argv: list[str]
    rc: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # the tool's user + system seconds
    maxrss: int = 0  # bytes
    registry_cpu: dict = field(default_factory=dict)  # name -> seconds during the run
    other_cpu: float = 0.0  # seconds used by processes other than the tool, registries, harness
    log_path: str = ""
    up: dict = field(default_factory=dict)
    tg: dict = field(default_factory=dict)
    blob_gets: Counter = field(default_factory=Counter)  # digest -> upstream GETs
    tg_other_repos: dict = field(default_factory=dict)  # repository -> writes outside the mirrored ones
    verify_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # broken invariants (mirrorsync)
    link: dict = field(default_factory=dict)  # WAN profiles: figures from the proxy (wan.py)
    capped: bool = False  # killed at the time cap (WAN profiles): wall time is a lower bound

    @property
    def other_share(self) -> float:
        """Share of the machine's CPU capacity used by others during the run."""
        return self.other_cpu / (self.wall * (os.cpu_count() or 1)) if self.wall else 0.0


def run_measured(run: Run, log_path: str, registries: list[Registry], env=None, cap: float | None = None) -> Run:
    """Runs `run.argv` to completion: wall time, the tool's CPU and peak RSS (wait4), and the
    CPU the registries and other processes used meanwhile. With `cap` (seconds), a run still
    going then is killed (`run.capped`; its wall time is then a lower bound)."""
    reg0 = {r.name: r.cpu_seconds() for r in registries}
    busy0, self0 = system_busy_seconds(), self_cpu_seconds()
    # Peak RSS comes from GNU time, which forks the tool from its own small process: a child
    # spawned straight from this Python process would inherit Python's RSS high-water mark
    # (Linux carries it across exec), so wait4's ru_maxrss would read at least Python's size.
    rss_file = log_path + ".rss"
    argv = [GNU_TIME, "-f", "%M", "-o", rss_file, *run.argv]
    with open(log_path, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=cap is not None)
        timer = None
        if cap is not None:
            def kill():
                run.capped = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            timer = threading.Timer(cap, kill)
            timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        if timer is not None:
            timer.cancel()
        run.wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    busy1, self1 = system_busy_seconds(), self_cpu_seconds()
    run.rc = proc.returncode
    # GNU time's own CPU is a millisecond or two: its rusage is the tool's.
    run.cpu = ru.ru_utime + ru.ru_stime
    with open(rss_file) as f:
        lines = f.read().split()
    run.maxrss = int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else 0  # KiB
    run.registry_cpu = {r.name: r.cpu_seconds() - reg0[r.name] for r in registries}
    run.other_cpu = max(
        0.0, (busy1 - busy0) - run.cpu - sum(run.registry_cpu.values()) - (self1 - self0)
    )
    run.log_path = log_path
    return run


def is_digest(ref: str | None) -> bool:
    return bool(ref) and ref.startswith("sha256:")


def upstream_figures(log: list[Access], run: Run) -> None:
    log = [a for a in log if a.user_agent != HARNESS_UA]
    up = Counter()
    heads_per_tag = Counter()
    for a in log:
        up["total"] += 1
        if a.kind == "manifests" and a.method == "GET":
            up["manifest_get"] += 1
            if not is_digest(a.ref):
                up["manifest_get_by_tag"] += 1
        elif a.kind == "manifests" and a.method == "HEAD":
            up["manifest_head"] += 1
            if not is_digest(a.ref):
                heads_per_tag[(a.repo, a.ref)] += 1
        elif a.kind == "blobs" and a.method == "GET":
            up["blob_get"] += 1
            if a.status in (200, 206):
                up["blob_bytes"] += a.size
                run.blob_gets[a.ref] += 1
        elif a.kind == "blobs" and a.method == "HEAD":
            up["blob_head"] += 1
        else:
            up["other"] += 1
        if a.status >= 400 and not (a.method == "HEAD" and a.status == 404):
            up["errors"] += 1
    up["blob_get_repeats"] = sum(n - 1 for n in run.blob_gets.values() if n > 1)
    up["tags_headed"] = len(heads_per_tag)
    up["max_heads_per_tag"] = max(heads_per_tag.values(), default=0)
    run.up = dict(up)


def target_figures(log: list[Access], run: Run, mirrored: set[str]) -> None:
    """Target-side counts. Writes are split between the mirrored repositories (`mirrored`) and
    any other repository (mirrorsync keeps its run state in `mirrorsync/state`)."""
    log = [a for a in log if a.user_agent != HARNESS_UA]
    tg = Counter()
    other_repos = Counter()
    for a in log:
        tg["total"] += 1
        if a.is_write:
            tg["writes"] += 1
            if a.repo in mirrored:
                tg["writes_mirrored"] += 1
            else:
                tg["writes_other"] += 1
                other_repos[a.repo or a.path] += 1
            if a.method == "POST" and "mount=" in a.query:
                tg["mount"] += 1
            elif a.method == "POST":
                tg["upload_start"] += 1
            elif a.method == "PATCH":
                tg["patch"] += 1
            elif a.method == "PUT" and a.kind == "manifests":
                tg["manifest_put"] += 1
            elif a.method == "PUT":
                tg["upload_finish"] += 1
            elif a.method == "DELETE":
                tg["delete"] += 1
        else:
            tg["reads"] += 1
            if a.method == "HEAD" and a.kind == "manifests":
                tg["manifest_head"] += 1
            elif a.method == "GET" and a.kind == "manifests":
                tg["manifest_get"] += 1
            elif a.method == "HEAD" and a.kind == "blobs":
                tg["blob_head"] += 1
            elif a.method == "GET" and a.kind == "blobs":
                tg["blob_get"] += 1
    run.tg = dict(tg)
    run.tg_other_repos = dict(other_repos)
