"""bench/run: mirrorsync and `skopeo sync` side by side on the same pair of local registries."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from . import corpus as corpus_mod
from . import fanout
from . import report
from . import scale
from . import wan
from .client import Client
from .layers import LayerFactory
from .measure import GNU_TIME, Run, run_measured, target_figures, upstream_figures
from .registry import REGISTRY_BIN, Registry

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKOPEO = "/usr/bin/skopeo"
TOOLS = ("mirrorsync", "skopeo")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmarks mirrorsync against `skopeo sync` on two local docker-registry "
        "instances (cold, no-op and incremental syncs, plus peak RSS on big layers).",
    )
    p.add_argument("--smoke", action="store_true", help="tiny corpus, 1 round; exits non-zero when mirrorsync fails or an invariant breaks (for CI)")
    p.add_argument("--rounds", type=int, help="rounds per tool and scenario (default 3; 1 with --smoke)")
    p.add_argument("--output", help="markdown report (default BENCHMARKS.md; target/bench/smoke.md with --smoke)")
    p.add_argument("--cache-dir", default=os.path.join(REPO_ROOT, "target", "bench-cache"), help="where generated layers are kept between runs (default target/bench-cache)")
    p.add_argument("--workdir", help="registries' storage and logs (default: a new temp dir, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the workdir (storage, access logs, tool logs)")
    p.add_argument("--no-build", action="store_true", help="use target/release/mirrorsync as it is")
    p.add_argument("--ms-top", action="append", default=[], help="extra top-level line for mirrorsync's sync.yaml (e.g. 'concurrency: 32'; for experiments: the report's figures are for defaults)")
    p.add_argument("--ms-registry", action="append", default=[], help="extra line for the upstream's entry in mirrorsync's sync.yaml (e.g. 'concurrency: 16')")
    p.add_argument("--wan-repeat", type=int, default=1, help="WAN profiles: run mirrorsync this many times per profile and scenario, each on a fresh target; the report gives the median run and the range (default 1)")
    p.add_argument("--wan-mirrorsync-only", action="store_true", help="WAN profiles: skip skopeo (quicker experiments)")
    p.add_argument("--skopeo-cap", type=float, help="WAN profiles: stop a skopeo run after this many seconds and report its time as a lower bound (default 240, 5 with --smoke; 0: no cap)")
    p.add_argument("--binary", help="benchmark this mirrorsync binary as it is (no build), e.g. a baseline kept aside")
    p.add_argument("--rev", help="benchmark this git revision (built from a clean export in target/bench-build) instead of the working tree")
    p.add_argument("--no-rss", action="store_true", help="skip the single-layer peak-RSS runs")
    p.add_argument("--no-wan", action="store_true", help="skip the WAN profiles (upstream behind a proxy adding RTT and a downlink cap)")
    p.add_argument("--wan-only", action="store_true", help="run only the WAN profiles; rewrite only their section of the report")
    p.add_argument("--wan-profile", action="append", help="run only this WAN profile (repeatable; see mirrorbench/wan.py)")
    p.add_argument("--scale", metavar="SIZES", help="run only the scale scenario for these list sizes (comma separated, e.g. 1000,10000) and rewrite only its section of the report; --smoke runs it at 200,1000")
    p.add_argument("--fan-out", action="store_true", help="run only the fan-out scenario (one upstream, 3 targets; mirrorsync with targets: [a,b,c] and with one target, skopeo sync x3, one target down; loopback and WAN) and rewrite only its section of the report")
    p.add_argument("--fan-wan", metavar="RTT_MS,MBIT", help="with --fan-out: the WAN setting's link (default 80,200); with --wan-mirrorsync-only, no skopeo behind it")
    p.add_argument("--fan-setting", action="append", choices=("loopback", "wan"), help="with --fan-out: only this setting (repeatable; default both)")
    a = p.parse_args(argv)
    if a.rounds is None:
        a.rounds = 1 if a.smoke else 3
    if a.skopeo_cap is None:
        a.skopeo_cap = 5.0 if a.smoke else 240.0
    if a.scale is not None:
        try:
            a.scale = [int(x) for x in a.scale.split(",") if x.strip()]
        except ValueError:
            p.error("--scale takes list sizes separated by commas, e.g. 1000,10000")
        if not a.scale or min(a.scale) < 1:
            p.error("--scale needs at least one list size of 1 or more")
    if a.no_wan and a.wan_only:
        p.error("--no-wan and --wan-only exclude each other")
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    if a.output is None:
        a.output = os.path.join(REPO_ROOT, "target", "bench", "smoke.md") if a.smoke else os.path.join(REPO_ROOT, "BENCHMARKS.md")
    return a


class BuildError(Exception):
    pass


def build(rev: str | None) -> tuple[str, str]:
    """Builds mirrorsync in release mode: the working tree, or with `rev` a clean export of that
    commit (`git archive`) in target/bench-build with its own target dir, so neither the tree
    nor target/release is touched. Returns (binary, provenance)."""
    if rev is None:
        cwd, env, binary = REPO_ROOT, None, os.path.join(REPO_ROOT, "target", "release", "mirrorsync")
        what = "the working tree"
    else:
        res = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--verify", rev + "^{commit}"], capture_output=True, text=True)
        if res.returncode != 0:
            raise BuildError(f"unknown revision {rev!r}: {res.stderr.strip()}")
        sha = res.stdout.strip()
        root = os.path.join(REPO_ROOT, "target", "bench-build")
        cwd = os.path.join(root, "src-" + sha[:12])
        if not os.path.isdir(cwd):
            tmp = cwd + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            archive = subprocess.Popen(["git", "-C", REPO_ROOT, "archive", sha], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout, check=True)
            if archive.wait() != 0:
                raise BuildError(f"git archive {sha} failed")
            os.replace(tmp, cwd)
        env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(root, "target"))
        binary = os.path.join(root, "target", "release", "mirrorsync")
        what = f"commit {sha[:12]} (clean export)"
    log(f"== cargo build --release ({what})")
    t0 = time.monotonic()
    if subprocess.run(["cargo", "build", "--release", "--bin", "mirrorsync"], cwd=cwd, env=env).returncode != 0:
        raise BuildError(f"cargo build --release failed for {what}")
    log(f"   built in {time.monotonic() - t0:.1f}s")
    return binary, what


class Bench:
    def __init__(self, args, binary: str, workdir: str):
        self.args = args
        self.binary = binary
        self.workdir = workdir
        self.upstream = Registry("upstream", workdir)
        self.target = Registry("target", workdir)
        self.runs: list[Run] = []
        self.storage_seq = 0
        self.warm: dict[str, str] = {}  # tool -> its warm target storage
        self.corpus = None
        self.changed: dict[int, dict[str, int]] = {}  # round -> blobs the move added
        self.cold_blobs: dict[int, dict[str, int]] = {}  # round -> the corpus's blobs at its cold sync
        self.seed_seconds = 0.0
        # WAN profiles (wan.py): the source mirrorsync and skopeo are pointed at (the proxy), its
        # CA (file, dir) when it is TLS, and processes whose CPU is not "others'".
        self.source_host: str | None = None
        self.source_ca: tuple[str, str] | None = None
        self.extra_procs: list = []
        self.wan_profiles: list = []
        self.wan_info: dict = {}

    # --- registries ------------------------------------------------------------------------
    def fresh_storage(self, label: str) -> str:
        self.storage_seq += 1
        return os.path.join(self.workdir, "storage", f"{self.storage_seq:03d}-{label}")

    def target_on(self, storage: str) -> None:
        if self.target.proc is None or self.target.storage != storage:
            self.target.start(storage)

    def drop_storage(self, storage: str) -> None:
        if self.target.storage == storage:
            self.target.stop()
        shutil.rmtree(storage, ignore_errors=True)

    # --- tools -----------------------------------------------------------------------------
    def command(self, tool: str, tags: list, dest_parent: str, name: str) -> list[str]:
        """The command line syncing `tags` (corpus Tags) from upstream to the target."""
        repos: dict[str, list[str]] = {}
        for t in tags:
            repos.setdefault(t.repo, []).append(t.tag)
        up = self.source_host or self.upstream.host
        ca = self.source_ca
        cfg_dir = os.path.join(self.workdir, "configs")
        os.makedirs(cfg_dir, exist_ok=True)
        if tool == "mirrorsync":
            lines = [
                "# generated by bench/run",
                *self.args.ms_top,
                "target:",
                f'  registry: "{self.target.host}"',
                "  insecure: true",
                '  prefix: ""',
                "registries:",
                f'  "{up}":',
                f'    ca_file: "{ca[0]}"' if ca else "    insecure: true",
                *("    " + line for line in self.args.ms_registry),
                "images:",
            ]
            for repo, tlist in repos.items():
                lines.append(f'  - source: "{up}/{repo}"')
                lines.append("    tags: [" + ", ".join(json.dumps(t) for t in tlist) + "]")
            path = os.path.join(cfg_dir, f"{name}-mirrorsync.yaml")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            return [self.binary, "sync", "--once", "--config", path]
        lines = [f'"{up}":'] + ([f'  cert-dir: "{ca[1]}"'] if ca else ["  tls-verify: false"]) + ["  images:"]
        for repo, tlist in repos.items():
            lines.append(f"    {repo}: [" + ", ".join(json.dumps(t) for t in tlist) + "]")
        path = os.path.join(cfg_dir, f"{name}-skopeo.yaml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        # skopeo sync keeps the last path component of each source repository under the
        # destination: library/web lands at <target>/library/web, as with mirrorsync's prefix "".
        return [
            SKOPEO, "sync", "--src", "yaml", "--dest", "docker", "--all", "--preserve-digests",
            *([] if ca else ["--src-tls-verify=false"]), "--dest-tls-verify=false",
            path, f"{self.target.host}/{dest_parent}",
        ]

    def measure(self, tool: str, scenario: str, rnd: int, tags: list, dest_parent: str = "library", cap: float | None = None) -> Run:
        name = f"r{rnd}-{scenario}".replace("/", "-")
        argv = self.command(tool, tags, dest_parent, name)
        run = Run(tool=tool, scenario=scenario, round=rnd, argv=argv)
        up_mark, tg_mark = self.upstream.mark(), self.target.mark()
        logs = os.path.join(self.workdir, "logs")
        os.makedirs(logs, exist_ok=True)
        run_measured(run, os.path.join(logs, f"{name}-{tool}.log"), [self.upstream, self.target, *self.extra_procs], cap=cap)
        upstream_figures(self.upstream.since(up_mark), run)
        target_figures(self.target.since(tg_mark), run, {t.repo for t in tags})
        if run.rc != 0 and not run.capped:
            with open(run.log_path, errors="replace") as f:
                tail = f.read()[-3000:]
            run.problems.append(f"{tool} exited {run.rc}; end of its output:\n{tail}")
        self.runs.append(run)
        up = run.up
        log(
            f"   {tool:10s} {scenario:11s} round {rnd}: {run.wall:7.2f}s  rc={run.rc}  "
            f"rss={run.maxrss / 2**20:6.1f}MiB  cpu={run.cpu:6.2f}s  up: {up.get('manifest_head', 0)} HEAD, "
            f"{up.get('manifest_get', 0)} mGET, {up.get('blob_get', 0)} bGET, "
            f"{up.get('blob_bytes', 0) / 1e6:.1f} MB  target writes: {run.tg.get('writes_mirrored', 0)}"
            + (f" (+{run.tg['writes_other']} to {', '.join(run.tg_other_repos)})" if run.tg.get("writes_other") else "")
            + f"  others' cpu: {run.other_share * 100:.0f}%"
        )
        return run

    def verify(self, run: Run, tags: list) -> None:
        """Every synced tag resolves at the target to the upstream digest (HEAD, full Accept)."""
        client = Client(self.target.host)

        def check(t):
            got = client.head_manifest(t.repo, t.tag)
            if got != t.manifest.digest:
                return f"{t.repo}:{t.tag}: target has {got}, upstream {t.manifest.digest}"
            return None

        with ThreadPoolExecutor(4) as pool:
            errors = [e for e in pool.map(check, tags) if e]
        run.verify_errors = errors
        if errors:
            shown = "\n    ".join(errors[:10])
            log(f"   !! {run.tool}: {len(errors)} tag(s) not as upstream:\n    {shown}")

    # --- scenarios -------------------------------------------------------------------------
    def round(self, rnd: int) -> None:
        order = TOOLS if rnd % 2 == 1 else tuple(reversed(TOOLS))
        tags = self.corpus.tags
        unique = self.corpus.blobs()
        self.cold_blobs[rnd] = unique
        log(f"== round {rnd}/{self.args.rounds} ({' then '.join(order)})")
        for tool in order:
            if tool in self.warm:
                self.drop_storage(self.warm[tool])
            storage = self.fresh_storage(f"{tool}-r{rnd}")
            self.warm[tool] = storage
            self.target_on(storage)
            cold = self.measure(tool, "cold", rnd, tags)
            self.verify(cold, tags)
            if tool == "mirrorsync":
                self.check_cold(cold, unique)
            noop = self.measure(tool, "noop", rnd, tags)
            if tool == "mirrorsync":
                self.check_noop(noop)
        changed = corpus_mod.move_tag(self.corpus, rnd)
        self.changed[rnd] = changed
        moved = self.corpus.moved
        log(
            f"   moved {moved.repo}:{moved.tag} upstream: {len(changed)} new blobs, "
            f"{sum(changed.values()) / 1e6:.2f} MB"
        )
        for tool in order:
            self.target_on(self.warm[tool])
            incr = self.measure(tool, "incremental", rnd, tags)
            self.verify(incr, [moved])
            if tool == "mirrorsync":
                self.check_incremental(incr, changed)
        self.target.stop()

    def rss_runs(self, rnd: int) -> None:
        order = TOOLS if rnd % 2 == 1 else tuple(reversed(TOOLS))
        for size, tag in self.corpus.rss:
            for tool in order:
                storage = self.fresh_storage(f"rss-{tool}")
                self.target_on(storage)
                run = self.measure(tool, f"rss-{size >> 20}m", rnd, [tag], dest_parent="rss")
                self.verify(run, [tag])
                if tool == "mirrorsync" and run.verify_errors:
                    run.problems.append(f"{tag.repo}:{tag.tag} not copied as upstream")
                self.drop_storage(storage)

    # --- invariants (mirrorsync) -----------------------------------------------------------
    def check_cold(self, run: Run, unique: dict[str, int]) -> None:
        if run.verify_errors:
            run.problems.append(f"cold: {len(run.verify_errors)} tags not as upstream at the target: {run.verify_errors[:3]}")
        repeats = {d: n for d, n in run.blob_gets.items() if n > 1}
        if repeats:
            run.problems.append(f"cold: blobs pulled more than once: {dict(list(repeats.items())[:5])}")
        extra = set(run.blob_gets) - set(unique)
        if extra:
            run.problems.append(f"cold: pulled blobs outside the corpus: {sorted(extra)[:5]}")
        missing = set(unique) - set(run.blob_gets)
        if missing:
            run.problems.append(f"cold: {len(missing)} corpus blobs never pulled (yet the tags verified?)")

    def check_noop(self, run: Run) -> None:
        up, tg = run.up, run.tg
        if up.get("manifest_get", 0):
            run.problems.append(f"no-op: {up['manifest_get']} upstream manifest GETs (want 0)")
        if up.get("blob_get", 0):
            run.problems.append(f"no-op: {up['blob_get']} upstream blob GETs (want 0)")
        if tg.get("writes_mirrored", 0):
            run.problems.append(f"no-op: {tg['writes_mirrored']} writes to mirrored repositories at the target (want 0)")

    def check_incremental(self, run: Run, changed: dict[str, int]) -> None:
        if run.verify_errors:
            run.problems.append(f"incremental: moved tag not as upstream at the target: {run.verify_errors}")
        extra = set(run.blob_gets) - set(changed)
        if extra:
            run.problems.append(f"incremental: pulled {len(extra)} unchanged blobs: {sorted(extra)[:5]}")
        repeats = {d: n for d, n in run.blob_gets.items() if n > 1}
        if repeats:
            run.problems.append(f"incremental: blobs pulled more than once: {repeats}")


def versions(binary: str, provenance: str) -> dict:
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError as e:
            return f"unavailable ({e})"

    with open(binary, "rb") as f:
        binary_sha = hashlib.sha256(f.read()).hexdigest()[:16]
    if provenance.startswith("commit") or "--binary" in provenance:
        source = provenance
    else:
        commit = out(["git", "-C", REPO_ROOT, "rev-parse", "--short=12", "HEAD"])
        dirty = out(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
        source = f"{provenance}: HEAD {commit}" + (" with uncommitted changes in src/" if dirty else "")
    return {
        "mirrorsync": out([binary, "--version"]) + f" ({source}; binary sha256 {binary_sha}…)",
        "skopeo": out([SKOPEO, "--version"]),
        "docker-registry": out([REGISTRY_BIN, "--version"]),
        "rustc": out(["rustc", "--version"]),
        "python": platform.python_version(),
    }


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "memory": mem,
        "cpu": cpu,
        "kernel": platform.release(),
        "os": _os_name(),
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def run_scale_only(args, binary, provenance, workdir, command, started, t_start) -> int:
    """`bench/run --scale SIZES`: the scale scenario alone; rewrites only its section."""
    rows = scale.run_scale(binary, workdir, args.scale, log)
    meta = {"command": command, "date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "provenance": provenance}
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    fig = scale.figure(rows, out_dir, wan.figures_dir(out_dir))
    scale.write(args.output, scale.render(rows, meta, fig))
    log(f"== scale section written to {os.path.relpath(args.output)} ({time.monotonic() - t_start:.0f}s in all)")
    if not (args.keep or args.workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    found = scale.problems(rows)
    for p in found:
        log("   - " + p)
    return 1 if found else 0


def run_fanout_only(args, bench, provenance, workdir, command, started, t_start) -> int:
    """`bench/run --fan-out`: the fan-out scenario alone (mirrorbench/fanout.py); rewrites only its section."""
    load_before = os.getloadavg()
    factory = LayerFactory(args.cache_dir, log=log)
    settings = args.fan_setting or ("loopback", "wan")
    link = fanout.WAN_PROFILE
    if args.fan_wan:
        rtt, mbit = (float(x) for x in args.fan_wan.split(","))
        link = fanout.wan_link(rtt, mbit)
    rows = fanout.run_fanout(bench, log, factory, smoke=args.smoke, rounds=args.rounds, settings=settings,
                             skopeo_wan=not args.wan_mirrorsync_only, link=link)
    meta = {"command": command, "date": started.strftime("%Y-%m-%d %H:%M UTC"), "provenance": provenance,
            "load": (load_before, os.getloadavg())}
    out_dir = os.path.dirname(os.path.abspath(args.output))
    fig_path = os.path.join(wan.figures_dir(out_dir), "fanout.svg")
    fanout.figure(rows, fig_path)
    fanout.write(args.output, fanout.render(rows, meta, os.path.relpath(fig_path, out_dir)))
    with open(os.path.join(workdir, "fanout.json"), "w") as f:
        json.dump(rows, f, indent=1)
    log(f"== fan-out section written to {os.path.relpath(args.output)} ({time.monotonic() - t_start:.0f}s in all)")
    found = fanout.problems(rows)
    for p in found:
        log("   - " + p)
    if not (args.keep or args.workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if found else 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "bench/run" + ("" if not sys.argv[1:] else " " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    for path in (REGISTRY_BIN, SKOPEO, GNU_TIME):
        if not os.access(path, os.X_OK):
            log(f"error: {path} is missing (apt-get install docker-registry skopeo time)")
            return 2
    try:
        if args.binary:
            built, provenance = os.path.abspath(args.binary), f"{args.binary} as given (--binary)"
        elif args.no_build:
            built, provenance = os.path.join(REPO_ROOT, "target", "release", "mirrorsync"), "target/release as found (--no-build)"
        else:
            built, provenance = build(args.rev)
    except BuildError as e:
        log(f"error: {e}")
        return 2
    if not os.access(built, os.X_OK):
        log(f"error: {built} is missing")
        return 2
    workdir = args.workdir or tempfile.mkdtemp(prefix="mirrorsync-bench-")
    os.makedirs(os.path.join(workdir, "bin"), exist_ok=True)
    # Run a copy: a `cargo build` elsewhere in the tree must not swap the binary mid-benchmark.
    binary = os.path.join(workdir, "bin", "mirrorsync")
    shutil.copy2(built, binary)
    bench = Bench(args, binary, workdir)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    if args.scale:
        return run_scale_only(args, binary, provenance, workdir, command, started, t_start)
    if args.fan_out:
        return run_fanout_only(args, bench, provenance, workdir, command, started, t_start)
    load_before = os.getloadavg()
    profiles = wan.SMOKE_PROFILES if args.smoke else wan.FULL_PROFILES
    if args.wan_profile:
        known = {p.name: p for p in wan.FULL_PROFILES + wan.SMOKE_PROFILES}
        unknown = [n for n in args.wan_profile if n not in known]
        if unknown:
            log(f"error: unknown WAN profile(s) {unknown}; known: {sorted(known)}")
            return 2
        profiles = [known[n] for n in args.wan_profile]
    fan_rows = []
    try:
        factory = LayerFactory(args.cache_dir, log=log)
        if not args.wan_only:
            log(f"== corpus ({'smoke' if args.smoke else 'full'}); workdir {workdir}")
            bench.upstream.start(os.path.join(workdir, "storage", "upstream"))
            t0 = time.monotonic()
            sizes = corpus_mod.SMOKE if args.smoke else corpus_mod.FULL
            bench.corpus = corpus_mod.seed(Client(bench.upstream.host), factory, sizes, log=log)
            bench.seed_seconds = time.monotonic() - t0
            c = bench.corpus
            log(
                f"   seeded in {bench.seed_seconds:.1f}s: {len(c.tags)} tags, {len(c.repos())} repositories, "
                f"{len(c.blobs())} unique blobs, {c.unique_blob_bytes() / 1e6:.1f} MB "
                f"(layers built {factory.built}, reused {factory.reused})"
            )
            for rnd in range(1, args.rounds + 1):
                bench.round(rnd)
                if not args.no_rss:
                    bench.rss_runs(rnd)
        if not args.no_wan:
            loop_corpus = bench.corpus
            if not args.smoke:
                # The WAN corpus: the same shape, small enough for thin links (own upstream storage).
                log("== WAN corpus")
                bench.upstream.start(os.path.join(workdir, "storage", "upstream-wan"))
                bench.corpus = corpus_mod.seed(Client(bench.upstream.host), factory, wan.WAN, log=log)
            elif loop_corpus is None:
                bench.upstream.start(os.path.join(workdir, "storage", "upstream"))
                bench.corpus = corpus_mod.seed(Client(bench.upstream.host), factory, corpus_mod.SMOKE, log=log)
            bench.wan_corpus = bench.corpus
            wan.run_profiles(bench, profiles, log)
            bench.corpus = loop_corpus
        if args.smoke and bench.corpus is not None and bench.upstream.proc is not None:
            # The fan-out scenario, tiny (mirrorbench/fanout.py): 3 targets, then one down.
            fan_rows = fanout.run_smoke(bench, log)
    finally:
        bench.target.stop()
        bench.upstream.stop()
    load_after = os.getloadavg()
    elapsed = time.monotonic() - t_start

    meta = {
        "command": command,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed": elapsed,
        "machine": machine(),
        "versions": versions(binary, provenance),
        "load": (load_before, load_after),
        "smoke": args.smoke,
        "rounds": args.rounds,
    }
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    wan_text = None
    if bench.wan_profiles:
        wan_text = wan.render(bench, meta, out_dir)
    if args.wan_only:
        problems = report.problems(bench)
        report.write_wan(args.output, wan_text)
    else:
        text, problems = report.render(bench, meta)
        report.write(args.output, text, wan_text)
    if fan_rows:
        problems = list(problems) + fanout.problems(fan_rows)
        out_fig = os.path.join(wan.figures_dir(out_dir), "fanout.svg")
        fanout.figure(fan_rows, out_fig)
        fanout.write(args.output, fanout.render(fan_rows, dict(meta, provenance=provenance), os.path.relpath(out_fig, out_dir)))
    if args.smoke:
        # The scale scenario at small sizes, so it cannot rot (its figures mean little here).
        rows = scale.run_scale(binary, workdir, [200, 1000], log)
        problems = list(problems) + scale.problems(rows)
        meta["provenance"] = provenance
        scale.write(args.output, scale.render(rows, meta, scale.figure(rows, out_dir, wan.figures_dir(out_dir))))
    with open(os.path.join(workdir, "runs.json"), "w") as f:
        json.dump(report.raw(bench), f, indent=1)
    log(f"== report written to {os.path.relpath(args.output)} ({elapsed:.0f}s in all)")
    log(report.summary(bench))
    if args.keep or args.workdir:
        log(f"   workdir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if problems:
        log("== FAILED: " + str(len(problems)) + " problem(s)")
        for p in problems:
            log("   - " + p.replace("\n", "\n     "))
        return 1
    log("== OK: mirrorsync succeeded and every invariant held")
    return 0
