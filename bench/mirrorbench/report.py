"""The markdown report (BENCHMARKS.md) and the console summary."""

from __future__ import annotations

import os
import statistics

ANALYSIS_BEGIN = "<!-- analysis: hand-written, kept by bench/run across runs; check it still matches the figures -->"
ANALYSIS_END = "<!-- end of analysis -->"
WAN_BEGIN = "<!-- wan: written by bench/run's WAN profiles (also alone: bench/run --wan-only) -->"
WAN_END = "<!-- end of wan -->"

MiB = 1 << 20


def _runs(bench, tool, scenario):
    return [r for r in bench.runs if r.tool == tool and r.scenario == scenario]


def _med(values):
    return statistics.median(values) if values else None


def _fmt_count(values):
    if not values:
        return "-"
    lo, hi, med = min(values), max(values), _med(values)
    s = f"{med:,.0f}" if float(med).is_integer() else f"{med:,.1f}"
    return s if lo == hi else f"{s} ({lo:,}–{hi:,})"


def _fmt_secs(values):
    if not values:
        return "-"
    med = _med(values)
    if len(values) == 1:
        return f"{med:.2f} s"
    return f"{med:.2f} s ({min(values):.2f}–{max(values):.2f})"


def _ratio(a, b, digits=2):
    if a is None or b is None:
        return "-"
    if b == 0:
        return "-" if a == 0 else "∞"
    return f"{a / b:.{digits}f}x"


def _mb(n):
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def scenario_table(bench, scenario, denominator=None, denominator_label=""):
    """Rows of figures for one scenario, mirrorsync and skopeo side by side."""
    ms, sk = _runs(bench, "mirrorsync", scenario), _runs(bench, "skopeo", scenario)
    rows = []

    def row(label, f, fmt=_fmt_count, ratio=True):
        a, b = [f(r) for r in ms], [f(r) for r in sk]
        rows.append(
            f"| {label} | {fmt(a)} | {fmt(b)} | "
            + (_ratio(_med(a), _med(b)) if ratio else "")
            + " |"
        )

    row("wall time, median (min–max)", lambda r: r.wall, _fmt_secs)
    row("CPU time of the tool (user+sys)", lambda r: r.cpu, _fmt_secs)
    row("peak RSS of the tool", lambda r: r.maxrss / MiB, lambda v: "-" if not v else f"{_med(v):.1f} MiB" + ("" if len(set(round(x, 1) for x in v)) == 1 else f" ({min(v):.1f}–{max(v):.1f})"))
    row("upstream manifest GET", lambda r: r.up.get("manifest_get", 0))
    row("upstream manifest HEAD", lambda r: r.up.get("manifest_head", 0))
    row("upstream blob GET", lambda r: r.up.get("blob_get", 0))
    row("upstream blob HEAD", lambda r: r.up.get("blob_head", 0))
    row("upstream requests, all", lambda r: r.up.get("total", 0))
    row("bytes pulled upstream (blob GET bodies)", lambda r: r.up.get("blob_bytes", 0), lambda v: "-" if not v else _mb(_med(v)))
    if denominator is not None:
        row(
            f"bytes pulled / {denominator_label}",
            lambda r: r.up.get("blob_bytes", 0) / denominator(r),
            lambda v: "-" if not v else f"{_med(v):.4f}x" + ("" if min(v) == max(v) else f" ({min(v):.4f}–{max(v):.4f})"),
            ratio=False,
        )
    row("blob GETs repeating a digest", lambda r: r.up.get("blob_get_repeats", 0), ratio=False)
    row("target writes to mirrored repos (POST/PATCH/PUT/DELETE)", lambda r: r.tg.get("writes_mirrored", 0))
    if any(r.tg.get("writes_other") for r in ms + sk):
        names = sorted({n for r in ms + sk for n in r.tg_other_repos})
        row(f"target writes elsewhere ({', '.join(names)})", lambda r: r.tg.get("writes_other", 0))
    row("  of which manifest PUT", lambda r: r.tg.get("manifest_put", 0))
    row("  of which cross-repo mount POST", lambda r: r.tg.get("mount", 0), ratio=False)
    row("target reads (GET/HEAD)", lambda r: r.tg.get("reads", 0))
    row("upstream registry CPU", lambda r: r.registry_cpu.get("upstream", 0), _fmt_secs)
    row("target registry CPU", lambda r: r.registry_cpu.get("target", 0), _fmt_secs)
    row(
        "other processes' CPU (share of the machine)",
        lambda r: r.other_share * 100,
        lambda v: "-" if not v else f"{_med(v):.0f}% (max {max(v):.0f}%)",
        ratio=False,
    )
    head = "| figure | mirrorsync | skopeo sync | mirrorsync / skopeo |\n|---|---|---|---|"
    return head + "\n" + "\n".join(rows)


def targets(bench):
    """[(target, measured, met: bool|None)] from the issue, evaluated on this run."""
    out = []
    c = bench.corpus
    ms_cold, sk_cold = _runs(bench, "mirrorsync", "cold"), _runs(bench, "skopeo", "cold")
    ms_noop, sk_noop = _runs(bench, "mirrorsync", "noop"), _runs(bench, "skopeo", "noop")
    ms_incr = _runs(bench, "mirrorsync", "incremental")
    ntags = len(c.tags)

    def wall_ratio(a, b):
        ma, mb = _med([r.wall for r in a]), _med([r.wall for r in b])
        return (ma / mb) if ma is not None and mb else None

    r = wall_ratio(ms_cold, sk_cold)
    out.append(("cold: wall time ≤ 0.4x skopeo's", f"{r:.2f}x ({_med([x.wall for x in ms_cold]):.2f} s vs {_med([x.wall for x in sk_cold]):.2f} s)" if r else "-", r is not None and r <= 0.4))
    pulled = [x.up.get("blob_bytes", 0) for x in ms_cold]
    ok = bool(pulled) and all(
        x.up.get("blob_bytes", 0) == sum(bench.cold_blobs[x.round].values())
        and set(x.blob_gets) == set(bench.cold_blobs[x.round])
        and not x.up.get("blob_get_repeats", 0)
        for x in ms_cold
    )
    if pulled:
        x = ms_cold[0]
        unique = sum(bench.cold_blobs[x.round].values())
        measured = (
            f"{x.up.get('blob_bytes', 0) / unique:.4f}x in round {x.round} ({x.up.get('blob_bytes', 0):,} of {unique:,} bytes); "
            f"{'every round' if ok else 'not every round'} pulled each corpus blob exactly once"
        )
    out.append(("cold: bytes pulled upstream = 1.00x the unique blob bytes", measured if pulled else "-", ok))
    mget = [x.up.get("manifest_get", 0) for x in ms_noop]
    sk_mget = [x.up.get("manifest_get", 0) for x in sk_noop]
    out.append((f"no-op on {ntags:,} tags: zero upstream manifest GETs (skopeo: ≥ 1 per tag)", f"{_fmt_count(mget)} (skopeo: {_fmt_count(sk_mget)})", bool(mget) and max(mget) == 0))
    heads = [x.up.get("manifest_head", 0) for x in ms_noop]
    per_tag = [x.up.get("max_heads_per_tag", 0) for x in ms_noop]
    out.append(("no-op: at most one upstream HEAD per tag", f"{_fmt_count(heads)} HEADs for {ntags:,} tags; at most {max(per_tag, default=0)} on one tag", bool(heads) and max(heads) <= ntags and max(per_tag) <= 1))
    writes = [x.tg.get("writes_mirrored", 0) for x in ms_noop]
    other = [x.tg.get("writes_other", 0) for x in ms_noop]
    where = sorted({n for x in ms_noop for n in x.tg_other_repos})
    out.append((
        "no-op: no write to any mirrored repository",
        _fmt_count(writes) + (f" (and {_fmt_count(other)} to {', '.join(where)}, the run state)" if any(other) else ""),
        bool(writes) and max(writes) == 0,
    ))
    r = wall_ratio(ms_noop, sk_noop)
    out.append(("no-op: wall time ≤ 0.3x skopeo's", f"{r:.2f}x ({_med([x.wall for x in ms_noop]):.2f} s vs {_med([x.wall for x in sk_noop]):.2f} s)" if r else "-", r is not None and r <= 0.3))
    if ms_incr:
        bad = []
        for x in ms_incr:
            changed = bench.changed[x.round]
            extra = set(x.blob_gets) - set(changed)
            if extra or x.up.get("blob_bytes", 0) != sum(changed.values()):
                bad.append(x.round)
        x = ms_incr[0]
        changed = bench.changed[x.round]
        measured = (
            f"{_fmt_count([y.up.get('blob_get', 0) for y in ms_incr])} blob GETs, "
            f"{_mb(_med([y.up.get('blob_bytes', 0) for y in ms_incr]))} for {len(changed)} new blobs of "
            f"{_mb(sum(changed.values()))} (round {x.round})"
        )
        if bad:
            measured += f"; rounds {bad} pulled other blobs"
        out.append(("incremental: only the changed layers cross the link", measured, not bad))
    rss = {}
    for size, _ in c.rss:
        v = [x.maxrss for x in _runs(bench, "mirrorsync", f"rss-{size >> 20}m")]
        if v:
            rss[size] = _med(v)
    if rss:
        biggest = max(rss)
        out.append((f"peak RSS < 64 MiB while copying the {biggest / 2**30:g} GiB layer" if biggest >= 1 << 30 else f"peak RSS < 64 MiB while copying the {biggest >> 20} MiB layer", f"{rss[biggest] / MiB:.1f} MiB", rss[biggest] < 64 * MiB))
        if len(rss) > 1:
            smallest = min(rss)
            delta = rss[biggest] - rss[smallest]
            ok = delta <= max(4 * MiB, 0.10 * rss[smallest])
            out.append((
                f"peak RSS flat as the layer grows ({smallest >> 20} MiB → {biggest >> 20} MiB; flat = within 10% or 4 MiB)",
                f"{rss[smallest] / MiB:.1f} MiB → {rss[biggest] / MiB:.1f} MiB ({delta / MiB:+.1f} MiB)",
                ok,
            ))
    return out


def rss_table(bench):
    c = bench.corpus
    rows = []
    for size, tag in c.rss:
        cells = []
        for tool in ("mirrorsync", "skopeo"):
            runs = _runs(bench, tool, f"rss-{size >> 20}m")
            if not runs:
                cells.append("- | - | -")
                continue
            rss = _med([r.maxrss for r in runs]) / MiB
            wall = _med([r.wall for r in runs])
            cpu = _med([r.cpu for r in runs])
            cells.append(f"{rss:.1f} MiB | {wall:.2f} s | {size / wall / 1e6:.0f} MB/s, {cpu:.2f} s CPU")
        rows.append(f"| {tag.repo}:{tag.tag} ({size >> 20} MiB layer) | " + " | ".join(cells) + " |")
    head = (
        "| image | mirrorsync peak RSS | wall | throughput, CPU | skopeo peak RSS | wall | throughput, CPU |\n"
        "|---|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows)


def problems(bench):
    out = []
    for r in bench.runs:
        for p in r.problems:
            out.append(f"{r.tool} {r.scenario} round {r.round}: {p}")
    return out


def busy_note(bench, meta):
    shares = [r.other_share for r in bench.runs if r.wall > 0]
    if not shares:
        return ""
    med, worst = statistics.median(shares) * 100, max(shares) * 100
    lb, la = meta["load"]
    text = (
        f"Other processes used a median {med:.0f}% (max {worst:.0f}%) of the machine's CPU capacity "
        f"during the timed runs (from /proc/stat, minus the tool, both registries and this harness); "
        f"load average {lb[0]:.2f} before, {la[0]:.2f} after."
    )
    if med >= 10 or worst >= 35:
        text = (
            "**The machine was busy** (other engineers' builds and tests share its 2 cores): "
            + text
            + " Wall times are noisier than on an idle machine; both tools ran alternately, so the "
            "ratios are fairer than the absolute times."
        )
    else:
        text = "The machine was mostly idle: " + text
    return text


def render(bench, meta):
    c = bench.corpus
    m, v = meta["machine"], meta["versions"]
    blobs = bench.cold_blobs.get(1) or c.blobs()  # as seeded (before any tag moved)
    unique = sum(blobs.values())
    lines = []
    w = lines.append
    w("# Benchmarks: mirrorsync and skopeo sync, side by side")
    w("")
    w("Generated by `bench/run` (the tables and targets below are rewritten on every run). Both tools")
    w("sync the same corpus from the same upstream `docker-registry` to a target `docker-registry` on")
    w("127.0.0.1, alternately, round after round. Request counts come from the registries' own access")
    w("logs; peak RSS from the OS (GNU `time -f %M`, i.e. the kernel's ru_maxrss), CPU time from `wait4`;")
    w("wall time is the tool's process, start to exit.")
    w("")
    w("Reproduce from a fresh clone with `bench/run` (full run: loopback rounds, then the WAN profiles")
    w("below; half an hour) or `bench/run --smoke` (tiny corpus and one small WAN profile; what CI runs).")
    w("`bench/run --help` lists the options.")
    w("")
    w("## This run")
    w("")
    w(f"- date: {meta['date']}; took {meta['elapsed'] / 60:.1f} min in all (corpus seeding {bench.seed_seconds:.0f} s)")
    w(f"- command: `{meta['command']}`" + (" (smoke corpus)" if meta["smoke"] else ""))
    w(f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory'] / 2**30:.1f} GiB memory, {m['os']}, Linux {m['kernel']}")
    w(f"- mirrorsync: {v['mirrorsync']}, built with `cargo build --release` ({v['rustc']})")
    w(f"- skopeo: `{v['skopeo']}`; docker-registry: `{v['docker-registry']}`; python {v['python']}")
    w(f"- rounds: {meta['rounds']} per tool and scenario; figures are medians, with the range when rounds differ")
    w(f"- load: {busy_note(bench, meta)}")
    w("")
    w("### Corpus")
    w("")
    w(f"{len(c.tags):,} tags in {len(c.repos())} repositories, {c.manifest_count():,} distinct top-level manifests, "
      f"{len(blobs):,} unique blobs, **{unique:,} unique blob bytes** ({unique / 1e6:,.1f} MB) as seeded. Layers are gzip'd tars")
    w("of real files from /usr/share, /usr/lib and /usr/bin (deterministic; cached in target/bench-cache).")
    w("")
    w("| repository | tags | what |")
    w("|---|---|---|")
    for repo, tags in c.repos().items():
        what = {
            "library/web": "OCI index: linux/amd64 + linux/arm64, each with an attestation manifest; shares base and runtime layers",
            "library/api": "OCI index, like web; shares base and runtime layers with web",
            "library/worker": "OCI index, like web; shares the base layers",
            "library/legacy": "Docker manifest list: amd64, arm64, arm/v7 (schema2)",
            "library/cache": "two tags on one digest (Docker schema2)",
            "library/big": "base layer + a single 1 GiB layer",
            "library/many": "small single-arch images: shared base + one small layer of their own",
        }.get(repo, "")
        shown = ", ".join(tags) if len(tags) <= 4 else f"{tags[0]} … {tags[-1]}"
        w(f"| {repo} | {len(tags):,}: {shown} | {what} |")
    w("")
    w("Configurations (ports vary per run):")
    w("")
    w("```yaml")
    w("# mirrorsync sync --once --config sync.yaml   (defaults: concurrency 64, 32 blob transfers per upstream, 32 writes to the target)")
    w("target: {registry: \"127.0.0.1:TARGET\", insecure: true, prefix: \"\"}")
    w("registries: {\"127.0.0.1:UPSTREAM\": {insecure: true}}")
    w("images:")
    w("  - {source: \"127.0.0.1:UPSTREAM/library/web\", tags: [\"1.25\", \"1.26\"]}")
    w("  # ... one entry per repository")
    w("```")
    w("")
    w("```sh")
    w("skopeo sync --src yaml --dest docker --all --preserve-digests \\")
    w("  --src-tls-verify=false --dest-tls-verify=false skopeo.yaml 127.0.0.1:TARGET/library")
    w("# skopeo.yaml: {\"127.0.0.1:UPSTREAM\": {tls-verify: false, images: {library/web: [\"1.25\", \"1.26\"], ...}}}")
    w("```")
    w("")
    w("Scenarios: **cold** — an empty target (the target registry restarted on a new storage dir for")
    w("each tool and round); **no-op** — the same sync again, nothing changed; **incremental** —")
    w(f"`{c.moved.repo}:{c.moved.tag}` rebuilt upstream (its amd64 image gets one new top layer, hence a new")
    w("config and attestation; arm64 unchanged), then each tool syncs its own warm target.")
    w("")
    w("## Results")
    w("")
    w("### Cold: empty target")
    w("")
    w(scenario_table(bench, "cold", lambda r: sum(bench.cold_blobs[r.round].values()), "unique blob bytes"))
    w("")
    w("### No-op: nothing changed upstream")
    w("")
    w(scenario_table(bench, "noop"))
    w("")
    w("### Incremental: one tag moved upstream")
    w("")
    w(scenario_table(bench, "incremental", lambda r: sum(bench.changed[r.round].values()), "bytes of the new blobs"))
    w("")
    if c.rss:
        w("### Peak RSS while copying one big layer")
        w("")
        w("A single-layer image synced alone into an empty target (median of the rounds).")
        w("")
        w(rss_table(bench))
        w("")
    w("## Targets (issue 3)")
    w("")
    if meta["smoke"]:
        w("_Smoke corpus: the targets are defined for the full corpus; shown for information only._")
        w("")
    w("| target | measured | |")
    w("|---|---|---|")
    for name, measured, ok in targets(bench):
        w(f"| {name} | {measured} | {'met' if ok else '**missed**'} |")
    w("")
    probs = problems(bench)
    w("## Invariants")
    w("")
    w("Checked on every mirrorsync run (`bench/run --smoke` exits non-zero when one breaks): the tool")
    w("exits 0; after a cold or incremental sync every tag resolves at the target to the upstream")
    w("digest; a cold sync pulls each corpus blob exactly once; a no-op sync makes no upstream")
    w("manifest or blob GET and no write to a mirrored repository; an incremental sync pulls only")
    w("the new blobs.")
    w("skopeo must exit 0 too, or the comparison is void.")
    w("")
    if probs:
        w("**Broken in this run:**")
        w("")
        for p in probs:
            w("- " + p.replace("\n", " ")[:600])
    else:
        w("All held in this run.")
    w("")
    return "\n".join(lines), probs


def _block(text, begin, end):
    if begin in text and end in text:
        return text[text.index(begin) : text.index(end) + len(end)]
    return ""


def write(path, text, wan_text=None):
    """Writes the report: `text`, then the WAN section (`wan_text`, or the previous file's when
    None: a run without WAN profiles keeps it), then the hand-written analysis block of the
    previous file (the scale section, written by `bench/run --scale` alone, is kept before it)."""
    from .fanout import FANOUT_BEGIN, FANOUT_END
    from .scale import SCALE_BEGIN, SCALE_END

    analysis = wan_block = scale_block = fanout_block = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        analysis = _block(old, ANALYSIS_BEGIN, ANALYSIS_END)
        wan_block = _block(old, WAN_BEGIN, WAN_END)
        scale_block = _block(old, SCALE_BEGIN, SCALE_END)
        fanout_block = _block(old, FANOUT_BEGIN, FANOUT_END)
    if wan_text is not None:
        wan_block = f"{WAN_BEGIN}\n{wan_text}\n{WAN_END}"
    with open(path, "w") as f:
        f.write(text)
        if wan_block:
            f.write("\n" + wan_block + "\n")
        if scale_block:
            f.write("\n" + scale_block + "\n")
        if fanout_block:
            f.write("\n" + fanout_block + "\n")
        if analysis:
            f.write("\n" + analysis + "\n")


def write_wan(path, wan_text):
    """Replaces only the WAN section of the report (bench/run --wan-only)."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    block = f"{WAN_BEGIN}\n{wan_text}\n{WAN_END}"
    prev = _block(old, WAN_BEGIN, WAN_END)
    if prev:
        new = old.replace(prev, block)
    elif ANALYSIS_BEGIN in old:
        i = old.index(ANALYSIS_BEGIN)
        new = old[:i] + block + "\n\n" + old[i:]
    else:
        new = old + ("\n" if old else "") + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def summary(bench):
    """A compact console table."""
    lines = [
        f"   {'scenario':12s} {'tool':10s} {'wall':>8s} {'cpu':>7s} {'rss MiB':>8s} {'mHEAD':>6s} {'mGET':>6s} {'bGET':>6s} {'MB up':>9s} {'writes':>7s}"
    ]
    scenarios = []
    for r in bench.runs:
        if r.scenario not in scenarios:
            scenarios.append(r.scenario)
    for s in scenarios:
        for tool in ("mirrorsync", "skopeo"):
            rs = _runs(bench, tool, s)
            if not rs:
                continue
            f = lambda g: _med([g(r) for r in rs])
            lines.append(
                f"   {s:12s} {tool:10s} {f(lambda r: r.wall):7.2f}s {f(lambda r: r.cpu):6.2f}s "
                f"{f(lambda r: r.maxrss) / MiB:8.1f} {f(lambda r: r.up.get('manifest_head', 0)):6.0f} "
                f"{f(lambda r: r.up.get('manifest_get', 0)):6.0f} {f(lambda r: r.up.get('blob_get', 0)):6.0f} "
                f"{f(lambda r: r.up.get('blob_bytes', 0)) / 1e6:9.1f} {f(lambda r: r.tg.get('writes_mirrored', 0)):7.0f}"
            )
    return "\n".join(lines)


def raw(bench):
    return [
        {
            "tool": r.tool,
            "scenario": r.scenario,
            "round": r.round,
            "argv": r.argv,
            "rc": r.rc,
            "wall": r.wall,
            "cpu": r.cpu,
            "maxrss": r.maxrss,
            "registry_cpu": r.registry_cpu,
            "target_other_repos": r.tg_other_repos,
            "other_cpu": r.other_cpu,
            "up": r.up,
            "target": r.tg,
            "problems": r.problems,
            "link": r.link,
            "verify_errors": r.verify_errors,
        }
        for r in bench.runs
    ]
