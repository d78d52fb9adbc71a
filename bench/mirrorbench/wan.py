"""WAN profiles: the upstream behind `wanproxy` (round-trip time, a shared downlink cap, optionally
TLS), mirrorsync and skopeo sync side by side against the link limit.

The link limit of a profile is unique blob bytes / downlink + 4 x RTT (HEAD, index, child
manifest, blob: the shortest chain of round trips before the first blob byte can flow).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from . import corpus as corpus_mod
from . import floor
from .client import Client
from .registry import _die_with_parent

KiB, MiB = 1 << 10, 1 << 20

# The WAN corpus: the loopback corpus's shape at a size a thin link moves in seconds (about
# 31 MB unique for its first 57 tags, 33 MB for all 1,008), no big image.
WAN = corpus_mod.Sizes(
    base=4608 * KiB,
    base_armv7=4 * MiB,
    runtime=2560 * KiB,
    app=1 * MiB,
    api_app=1536 * KiB,
    worker_app=512 * KiB,
    legacy_app=768 * KiB,
    cache_app=1 * MiB,
    many_base=1 * MiB,
    many_layer=2 * KiB,
    many_tags=1001,  # 1,008 tags in all, as the loopback corpus (which has library/big instead)
    big=0,
    rss=[],
    incr=256 * KiB,
)


MODEL_TITLES = {"nowindow": ", no window, FIFO bottleneck", "nowindow-fair": ", no window, fair-queued bottleneck"}
MODEL_PROXY_ARGS = {"nowindow": ["--no-window", "--queue", "fifo"], "nowindow-fair": ["--no-window"]}


@dataclass(frozen=True)
class Profile:
    name: str  # file-name safe
    rtt_ms: float
    mbit: float
    tags: int | None  # the first N tags of the corpus; None: all
    tls: bool
    scenarios: tuple[str, ...]
    # "window": a TCP-like window per connection and a fair-queued bottleneck (wanproxy's
    # default); "nowindow": every chunk delayed by RTT/2 each way, no window, one FIFO queue at
    # the bottleneck (`wanproxy --no-window --queue fifo`); "nowindow-fair": no window, the
    # bottleneck still fair-queued (`wanproxy --no-window`).
    model: str = "window"

    @property
    def rate(self) -> float:
        return self.mbit * 1e6 / 8

    @property
    def title(self) -> str:
        n = "the whole corpus" if self.tags is None else f"{self.tags} tags"
        return (
            f"{self.rtt_ms:g} ms RTT, {self.mbit:g} Mbit/s, {n}"
            + (", TLS upstream" if self.tls else "")
            + MODEL_TITLES.get(self.model, "")
        )

    def proxy_args(self) -> list[str]:
        return MODEL_PROXY_ARGS.get(self.model, [])

    def link_limit(self, unique_bytes: int) -> float:
        return unique_bytes / self.rate + 4 * self.rtt_ms / 1000


FULL_PROFILES = [
    Profile("wan-80ms-200mbit", 80, 200, 57, False, ("cold",)),
    Profile("wan-150ms-24mbit", 150, 24, 57, False, ("cold",)),
    Profile("wan-80ms-200mbit-tls", 80, 200, 57, True, ("cold",)),
    Profile("wan-150ms-24mbit-tls", 150, 24, 57, True, ("cold",)),
    Profile("wan-80ms-200mbit-1008", 80, 200, None, False, ("cold", "noop")),
    Profile("wan-80ms-200mbit-nowindow", 80, 200, 57, False, ("cold",), "nowindow"),
    Profile("wan-80ms-200mbit-nowindow-fair", 80, 200, 57, False, ("cold",), "nowindow-fair"),
]
SMOKE_PROFILES = [Profile("wan-smoke-tls", 20, 100, 9, True, ("cold", "noop"))]


class Proxy:
    """A wanproxy process in front of the upstream registry."""

    name = "proxy"

    def __init__(self, workdir: str, upstream_host: str, profile: Profile):
        self.log_path = os.path.join(workdir, f"proxy-{profile.name}.log")
        bench_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen(
            [
                sys.executable, "-B", "-m", "mirrorbench.wanproxy", "--upstream", upstream_host,
                "--rtt-ms", str(profile.rtt_ms), "--downlink-mbit", str(profile.mbit),
                *profile.proxy_args(),
            ],
            cwd=bench_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "ab"),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        line = self.proc.stdout.readline().decode()
        # "listening on 127.0.0.1:PORT control 127.0.0.1:PORT"
        parts = line.split()
        if len(parts) != 5:
            self.stop()
            raise RuntimeError(f"wanproxy did not start: {line!r} (see {self.log_path})")
        self.host = parts[2]
        self.control = parts[4]

    def ask(self, what: str) -> dict:
        host, _, port = self.control.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(what.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_certs(workdir: str) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl). Returns (ca, cert, key)."""
    d = os.path.join(workdir, "tls")
    os.makedirs(d, exist_ok=True)
    ca, ca_key = os.path.join(d, "ca.crt"), os.path.join(d, "ca.key")
    cert, key, csr = os.path.join(d, "server.cert"), os.path.join(d, "server.key"), os.path.join(d, "server.csr")
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", ca_key,
        "-out", ca, "-days", "2", "-subj", "/CN=mirrorsync bench CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
        "-out", csr, "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", ext)
    # skopeo (containers/image) reads CA roots as *.crt from a directory: keep the CA alone in one.
    ca_dir = os.path.join(d, "ca")
    os.makedirs(ca_dir, exist_ok=True)
    with open(ca) as src, open(os.path.join(ca_dir, "ca.crt"), "w") as dst:
        dst.write(src.read())
    return ca, cert, key


def timeline(stats: dict, t0: float, t1: float) -> list[float]:
    """Bytes/s delivered by the proxy in each slot from t0 to t1 (CLOCK_MONOTONIC seconds)."""
    slot = stats["slot"]
    slots = {int(k): v for k, v in stats["slots"].items()}
    first, last = int(t0 / slot), int(t1 / slot)
    return [slots.get(i, 0) / slot for i in range(first, last + 1)]


def run_profiles(bench, profiles: list[Profile], log) -> None:
    """Runs every profile: both tools, each scenario, a fresh target per tool. Adds the runs to
    bench.runs (scenario "<profile>/<scenario>") and the per-run link figures to bench.wan."""
    c = bench.corpus
    bench.wan_profiles = profiles
    up_storage = bench.upstream.storage
    certs = None
    for prof in profiles:
        tags = c.tags if prof.tags is None else c.tags[: prof.tags]
        unique = {}
        for t in tags:
            for b in t.manifest.blobs:
                unique[b.digest] = b.size
        unique_bytes = sum(unique.values())
        limit = prof.link_limit(unique_bytes)
        bench.wan_info[prof.name] = {"tags": len(tags), "unique_bytes": unique_bytes, "blobs": len(unique), "link_limit": limit}
        if prof.tls and certs is None:
            certs = make_certs(bench.workdir)
        want_tls = certs if prof.tls else None
        if bench.upstream.tls != want_tls or bench.upstream.proc is None:
            bench.upstream.tls = want_tls
            bench.upstream.start(up_storage)
        proxy = Proxy(bench.workdir, bench.upstream.host, prof)
        log(f"== {prof.name}: {prof.title}; {len(tags)} tags, {unique_bytes / 1e6:.1f} MB unique; link limit {limit:.2f} s")
        bench.source_host = proxy.host
        bench.source_ca = (certs[0], os.path.join(os.path.dirname(certs[0]), "ca")) if prof.tls else None
        bench.extra_procs = [proxy]
        try:
            order = ("mirrorsync",) if bench.args.wan_mirrorsync_only else ("mirrorsync", "skopeo")
            # mirrorsync's runs repeated --wan-repeat times (a fresh target each): on a shared
            # machine one run's wall time is noise; the report gives the median and the range.
            reps = max(1, bench.args.wan_repeat)
            for tool, rep in [(t, k) for t in order for k in range(reps if t == "mirrorsync" else 1)]:
                storage = bench.fresh_storage(f"{prof.name}-{tool}-{rep + 1}")
                bench.target_on(storage)
                cold_capped = False
                for scenario in prof.scenarios:
                    cap = bench.args.skopeo_cap if tool == "skopeo" and bench.args.skopeo_cap > 0 else None
                    if scenario == "noop" and cold_capped:
                        # The no-op needs a complete target: finished, unmeasured, by mirrorsync.
                        log("     completing the target (mirrorsync, not measured) for skopeo's no-op")
                        argv = bench.command("mirrorsync", tags, "library", f"{prof.name}-complete")
                        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
                    proxy.ask("reset")
                    t0 = time.monotonic()
                    run = bench.measure(tool, f"{prof.name}/{scenario}", rep + 1, tags, cap=cap)
                    if run.capped:
                        log(f"     stopped at the {cap:.0f} s cap")
                        cold_capped = cold_capped or scenario == "cold"
                    if tool == "skopeo" and run.rc != 0 and not run.capped:
                        # skopeo 1.9 now and then fails a PATCH to the (loaded) target registry
                        # ("unexpected EOF"); its figures would be void: rerun it once on a fresh
                        # target, and say so in the report.
                        bench.runs.remove(run)
                        log("     skopeo failed; rerunning it once on a fresh target")
                        bench.wan_info[prof.name].setdefault("notes", []).append(
                            f"skopeo's first {scenario} run exited {run.rc} after {run.wall:.1f} s; the figures are from a rerun on a fresh target"
                        )
                        bench.drop_storage(storage)
                        storage = bench.fresh_storage(f"{prof.name}-{tool}-rerun")
                        bench.target_on(storage)
                        proxy.ask("reset")
                        t0 = time.monotonic()
                        run = bench.measure(tool, f"{prof.name}/{scenario}", rep + 1, tags, cap=cap)
                    t1 = t0 + run.wall
                    stats = proxy.ask("stats")
                    first = min(stats["conn_times"], default=t1)
                    run.link = {
                        "first_connection": first - t0,
                        "connections": stats["connections"],
                        "tls_handshakes": stats["tls_hellos"],
                        "down_bytes": stats["down_bytes"],
                        "timeline": timeline(stats, t0, t1),
                        "slot": stats["slot"],
                        "link_limit": limit,
                    }
                    log(f"     link: {stats['connections']} connections, {stats['tls_hellos']} TLS handshakes, "
                        f"{stats['down_bytes'] / 1e6:.1f} MB down; {run.wall / limit:.2f}x the link limit")
                    if scenario == "cold" and not run.capped:
                        bench.verify(run, tags)
                        if tool == "mirrorsync":
                            bench.check_cold(run, unique)
                    elif scenario == "noop" and tool == "mirrorsync":
                        bench.check_noop(run)
                bench.drop_storage(storage)
            if "cold" in prof.scenarios:
                measure_floor(bench, prof, tags, log, certs[0] if prof.tls else None)
        finally:
            proxy.stop()
            bench.source_host = None
            bench.source_ca = None
            bench.extra_procs = []
    if bench.upstream.tls is not None:
        bench.upstream.tls = None
        bench.upstream.start(up_storage)


FLOOR_RUNS = 2


def measure_floor(bench, prof: Profile, tags, log, ca_file: str | None) -> None:
    """The registries' CPU for the protocol-minimal cold copy of `tags` (floor.py), each time on
    a fresh target, straight to the upstream registry (the link does not change what they
    compute). The registries' CPU varies from run to run by 20% here (the target's file system
    writes): the lowest of FLOOR_RUNS is kept, the figure most in a client's favour."""
    cores = os.cpu_count() or 1
    best = None
    for k in range(FLOOR_RUNS):
        storage = bench.fresh_storage(f"{prof.name}-floor-{k}")
        bench.target_on(storage)
        cpu0 = (bench.upstream.cpu_seconds(), bench.target.cpu_seconds())
        t0 = time.monotonic()
        counts = floor.copy_minimal(Client(bench.upstream.host, ca_file), Client(bench.target.host), [(t.repo, t.tag) for t in tags])
        wall = time.monotonic() - t0
        up, tg = bench.upstream.cpu_seconds() - cpu0[0], bench.target.cpu_seconds() - cpu0[1]
        log(f"     protocol floor: registries used {up:.2f} + {tg:.2f} CPU-s ({(up + tg) / cores:.2f} s on {cores} cores); "
            f"the minimal client took {wall:.1f} s")
        if best is None or up + tg < best["upstream"] + best["target"]:
            best = {"upstream": up, "target": tg, "cores": cores, "counts": counts, "runs": FLOOR_RUNS}
        bench.drop_storage(storage)
    bench.wan_info[prof.name]["floor"] = best


# --- report -----------------------------------------------------------------------------------

def svg_timeline(prof: Profile, runs: dict, path: str) -> None:
    """Two panels (mirrorsync above, skopeo below): bytes/s delivered over the run, each on its
    own time axis, with the downlink cap and the link limit marked."""
    width, panel_h, left, right, top = 760, 170, 60, 20, 30
    gap = 40
    cap = prof.rate / 1e6  # MB/s
    ymax = cap * 1.15
    tools = [t for t in ("mirrorsync", "skopeo") if t in runs]
    height = top + len(tools) * (panel_h + gap) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13" font-weight="bold">{prof.title}: bytes/s from upstream, cold sync</text>',
    ]
    for i, tool in enumerate(tools):
        run = runs[tool]
        series = run.link["timeline"]
        slot = run.link["slot"]
        dur = max(run.wall, slot)
        y0 = top + i * (panel_h + gap) + 14
        plot_w = width - left - right
        sx = lambda t: left + plot_w * t / dur
        sy = lambda v: y0 + panel_h - panel_h * min(v / 1e6, ymax) / ymax
        limit = run.link["link_limit"]
        what = f"stopped at {run.wall:.0f} s, unfinished" if run.capped else f"{run.wall:.2f} s ({run.wall / limit:.2f}x the link limit of {limit:.2f} s)"
        out.append(f'<text x="{left}" y="{y0 - 4}" font-weight="bold">{tool}: {what}</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#999"/>')
        # y axis: 0, cap
        for v in (0, cap / 2, cap):
            y = sy(v * 1e6)
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        out.append(f'<text x="12" y="{y0 + panel_h / 2:.0f}" transform="rotate(-90 12 {y0 + panel_h / 2:.0f})" text-anchor="middle">MB/s</text>')
        ycap = sy(cap * 1e6)
        out.append(f'<line x1="{left}" y1="{ycap:.1f}" x2="{left + plot_w}" y2="{ycap:.1f}" stroke="#c33" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{left + plot_w - 4}" y="{ycap - 4:.1f}" text-anchor="end" fill="#c33">downlink {cap:.1f} MB/s</text>')
        if limit <= dur:
            xl = sx(limit)
            out.append(f'<line x1="{xl:.1f}" y1="{y0}" x2="{xl:.1f}" y2="{y0 + panel_h}" stroke="#36c" stroke-dasharray="3,3"/>')
            out.append(f'<text x="{xl + 3:.1f}" y="{y0 + 12}" fill="#36c">link limit</text>')
        # x ticks
        step = _nice_step(dur)
        t = 0.0
        while t <= dur + 1e-9:
            x = sx(t)
            out.append(f'<line x1="{x:.1f}" y1="{y0 + panel_h}" x2="{x:.1f}" y2="{y0 + panel_h + 4}" stroke="#999"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + panel_h + 15}" text-anchor="middle">{t:g} s</text>')
            t += step
        pts = [f"{sx(0):.1f},{sy(0):.1f}"]
        for k, v in enumerate(series):
            a, b = k * slot, min((k + 1) * slot, dur)
            if a > dur:
                break
            pts.append(f"{sx(a):.1f},{sy(v):.1f}")
            pts.append(f"{sx(b):.1f},{sy(v):.1f}")
        pts.append(f"{sx(dur):.1f},{sy(0):.1f}")
        out.append(f'<polygon points="{" ".join(pts)}" fill="#4a8" fill-opacity="0.35" stroke="#286" stroke-width="1"/>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def _nice_step(dur: float) -> float:
    for s in (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600):
        if dur / s <= 10:
            return s
    return 1200


def _mib(n):
    return f"{n / MiB:.1f} MiB"


def figures_dir(out_dir: str) -> str:
    """Where the timelines go: bench/figures/ for the report at the repository's root (its top
    level shows the project's parts, not its outputs), figures/ beside any other report."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.abspath(out_dir) == root:
        return os.path.join(root, "bench", "figures")
    return os.path.join(out_dir, "figures")


def render(bench, meta: dict, out_dir: str) -> str:
    """The markdown of the WAN section; writes one SVG per profile into out_dir."""
    wan_runs = [r for r in bench.runs if "/" in r.scenario]
    shares = sorted(r.other_share for r in wan_runs) or [0.0]
    v = meta["versions"]
    lines = [
        "## WAN profiles: a far-away upstream",
        "",
        f"- date: {meta['date']}; command: `{meta['command']}`",
        f"- mirrorsync: {v['mirrorsync']}; skopeo: `{v['skopeo']}`",
        f"- load: other processes used a median {shares[len(shares) // 2] * 100:.0f}% (max {shares[-1] * 100:.0f}%) "
        "of the machine's CPU during these runs (the proxy, both registries and the harness excluded); "
        f"load average {meta['load'][0][0]:.2f} before, {meta['load'][1][0]:.2f} after",
        "",
        "The upstream registry behind `bench/mirrorbench/wanproxy.py`: a TCP proxy that adds the round-trip",
        "time to every exchange (half each way) and one more to each new connection (the TCP handshake),",
        "and caps the downlink with one fair-queued bottleneck shared by all connections (a window of",
        "1.25 x bandwidth x RTT per connection, as TCP's; no slow start, no loss). With TLS, the upstream `docker-registry`",
        "serves HTTPS itself (HTTP/2 offered over ALPN) and the proxy relays the encrypted bytes.",
        "One run per tool and profile, default settings for both tools; connections and TLS handshakes",
        "are counted at the proxy, requests in the upstream's access log.",
        "**Link limit** = unique blob bytes / downlink + 4 x RTT.",
        "",
    ]
    svgs = []
    for prof in bench.wan_profiles:
        info = bench.wan_info[prof.name]
        lines += [
            f"### {prof.title}",
            "",
            f"{info['tags']} tags, {info['blobs']} unique blobs, {info['unique_bytes']:,} unique blob bytes; "
            f"link limit {info['link_limit']:.2f} s.",
            "",
        ] + [f"Note: {n}." for n in info.get("notes", [])] + ([""] if info.get("notes") else [])
        for scenario in prof.scenarios:
            every = [r for r in bench.runs if r.scenario == f"{prof.name}/{scenario}"]
            if not every:
                continue
            # The run of median wall time stands for each tool (the last one if only one).
            runs = {}
            walls = {}
            for tool in ("mirrorsync", "skopeo"):
                mine = sorted((r for r in every if r.tool == tool), key=lambda r: r.wall)
                if mine:
                    runs[tool] = mine[(len(mine) - 1) // 2]
                    walls[tool] = [r.wall for r in mine]
            lines += [
                f"**{'cold: empty target' if scenario == 'cold' else 'no-op: the same sync again'}**",
                "",
                "| figure | mirrorsync | skopeo sync | link limit |",
                "|---|---|---|---|",
            ]

            def row(label, f, limit=""):
                cells = [f(runs[t]) if t in runs else "-" for t in ("mirrorsync", "skopeo")]
                lines.append(f"| {label} | {cells[0]} | {cells[1]} | {limit} |")

            lim = info["link_limit"]
            row("wall time", lambda r: f"> {r.wall:.0f} s (stopped at the cap)" if r.capped else f"{r.wall:.2f} s", f"{lim:.2f} s" if scenario == "cold" else "")
            if any(len(w) > 1 for w in walls.values()):
                row(
                    "runs: wall time, median (min–max)",
                    lambda r: f"{len(walls[r.tool])}: {walls[r.tool][(len(walls[r.tool]) - 1) // 2]:.2f} s "
                    f"({walls[r.tool][0]:.2f}–{walls[r.tool][-1]:.2f}; " + ", ".join(f"{w / lim:.2f}x" for w in walls[r.tool]) + ")",
                )
            if scenario == "cold":
                row("wall time / link limit", lambda r: f"> {r.wall / lim:.0f}x" if r.capped else f"**{r.wall / lim:.2f}x**")
            row("bytes pulled (blob GET bodies)", lambda r: f"{r.up.get('blob_bytes', 0) / 1e6:,.1f} MB", f"{info['unique_bytes'] / 1e6:,.1f} MB" if scenario == "cold" else "")
            row("upstream requests (manifest HEAD / GET, blob GET)", lambda r: f"{r.up.get('total', 0):,} ({r.up.get('manifest_head', 0):,} / {r.up.get('manifest_get', 0):,}, {r.up.get('blob_get', 0):,})")
            row("connections opened", lambda r: f"{r.link['connections']:,}")
            row("first connection to upstream after start", lambda r: f"{r.link['first_connection']:.2f} s")
            if prof.tls:
                row("TLS handshakes", lambda r: f"{r.link['tls_handshakes']:,}")
            row("peak RSS", lambda r: _mib(r.maxrss) if r.maxrss else "-")
            row("CPU time of the tool", lambda r: "-" if r.capped else f"{r.cpu:.2f} s")
            row(
                "CPU time of the registries (upstream + target)",
                lambda r: "-" if r.capped else f"{r.registry_cpu.get('upstream', 0):.2f} + {r.registry_cpu.get('target', 0):.2f} s",
            )
            if any(r.capped for r in runs.values()):
                lines.append("")
                lines.append(f"A run stopped at the cap (`--skopeo-cap`, {bench.args.skopeo_cap:.0f} s) shows what it did until then.")
            lines.append("")
            fl = info.get("floor")
            if scenario == "cold" and fl:
                n = fl["counts"]
                requests = n["manifest_get"] + n["blob_get"] + 2 * n["blob_upload"] + n["mount"] + n["manifest_put"]
                lines += [
                    f"**Protocol floor** (`bench/mirrorbench/floor.py`): a client that makes only the requests every tool must make "
                    f"(upstream: a GET per manifest and per blob; target: a POST and a PUT per blob, a mount for a blob another "
                    f"repository already has, a PUT per manifest; {requests:,} requests, no HEAD, 32 at once) costs these registries "
                    f"{fl['upstream']:.2f} + {fl['target']:.2f} CPU-s (the lowest of {fl['runs']} runs): on this machine's {fl['cores']} cores no client finishes "
                    f"in under **{(fl['upstream'] + fl['target']) / fl['cores']:.2f} s**, before its own CPU and the proxy's.",
                    "",
                ]
            if scenario == "cold" and all(t in runs for t in ("mirrorsync",)):
                path = os.path.join(figures_dir(out_dir), f"{prof.name}.svg")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                svg_timeline(prof, runs, path)
                name = os.path.relpath(path, out_dir)
                svgs.append(name)
                lines += [f"![bytes/s over the run, {prof.title}]({name})", ""]
    return "\n".join(lines)
