"""The scale scenario: how mirrorsync's cost grows with the length of the tag list.

N small tags (one layer shared by all, one config blob and one Docker schema2 manifest of their
own each) in repositories of 1,000 tags (`scale/rNN`), chosen with `tags: [{all: true}]`. The
upstream storage is written straight to disk in distribution's filesystem layout, not through the
registry API: 100,000 tags seed in about a minute that way, and the seeding does not depend on the
code under test (the registry then serves it like anything pushed to it).

Per list size: a cold sync (empty target) and a no-op (the same sync again), each measured for
wall time, the tool's CPU, its peak RSS and the series it exports (`--metrics-file`), with the
default per-tag series and with `tag_series: out_of_sync`.

`bench/run --scale 1000,10000` rewrites only this section of BENCHMARKS.md; 100,000 tags can be
measured the same way by hand (`--scale 100000`: the seeding takes about a minute, the cold sync
several minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from .measure import Run, run_measured
from .registry import Registry

SCALE_BEGIN = "<!-- scale: begin (bench/run --scale rewrites this section) -->"
SCALE_END = "<!-- scale: end -->"
TAGS_PER_REPO = 1000
MODES = ("all", "out_of_sync")


def _put_blob(root: str, data: bytes) -> str:
    h = hashlib.sha256(data).hexdigest()
    d = os.path.join(root, "docker/registry/v2/blobs/sha256", h[:2], h)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "data")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
    return h


def _link(path: str, h: str) -> None:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "link"), "w") as f:
        f.write("sha256:" + h)


def seed(storage: str, n: int) -> list[str]:
    """Writes n small tags into a distribution filesystem storage; returns the repositories."""
    layer = b"mirrorbench scale layer\n" * 64
    lh = _put_blob(storage, layer)
    repos = [f"scale/r{r:03d}" for r in range(max(1, -(-n // TAGS_PER_REPO)))]
    base = os.path.join(storage, "docker/registry/v2/repositories")
    for repo in repos:
        _link(os.path.join(base, repo, "_layers/sha256", lh), lh)
    for i in range(n):
        rb = os.path.join(base, repos[i // TAGS_PER_REPO])
        cfg = json.dumps(
            {"architecture": "amd64", "os": "linux", "config": {"Labels": {"n": str(i)}}, "rootfs": {"type": "layers", "diff_ids": ["sha256:" + lh]}}
        ).encode()
        ch = _put_blob(storage, cfg)
        _link(os.path.join(rb, "_layers/sha256", ch), ch)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(cfg), "digest": "sha256:" + ch},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer), "digest": "sha256:" + lh}],
            }
        ).encode()
        mh = _put_blob(storage, manifest)
        _link(os.path.join(rb, "_manifests/revisions/sha256", mh), mh)
        tag = f"t{i:06d}"
        _link(os.path.join(rb, "_manifests/tags", tag, "current"), mh)
        _link(os.path.join(rb, "_manifests/tags", tag, "index/sha256", mh), mh)
    return repos


def config(upstream: Registry, target: Registry, repos: list[str], mode: str) -> str:
    lines = [
        f"target: {{registry: '{target.host}', insecure: true}}",
        f"registries: {{'{upstream.host}': {{insecure: true}}}}",
        f"tag_series: {mode}",
        "images:",
    ]
    for repo in repos:
        lines += [f"  - source: {upstream.host}/{repo}", "    tags: [{all: true}]"]
    return "\n".join(lines) + "\n"


def count_series(path: str) -> int:
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip() and not line.startswith("#"))
    except OSError:
        return 0


def run_scale(binary: str, workdir: str, sizes: list[int], log) -> list[dict]:
    """Seeds, syncs cold and no-op per size and series mode; returns one row per measurement."""
    rows = []
    upstream = Registry("scale-upstream", workdir)
    target = Registry("scale-target", workdir)
    try:
        for n in sizes:
            storage = os.path.join(workdir, "storage", f"scale-up-{n}")
            shutil.rmtree(storage, ignore_errors=True)
            log(f"== scale: seeding {n:,} tags")
            repos = seed(storage, n)
            upstream.start(storage)
            for mode in MODES:
                tstore = os.path.join(workdir, "storage", f"scale-tg-{n}-{mode}")
                shutil.rmtree(tstore, ignore_errors=True)
                target.start(tstore)
                cfg = os.path.join(workdir, f"scale-{n}-{mode}.yaml")
                with open(cfg, "w") as f:
                    f.write(config(upstream, target, repos, mode))
                for scenario in ("cold", "no-op"):
                    metrics = os.path.join(workdir, f"scale-{n}-{mode}-{scenario}.prom")
                    run = Run(
                        tool="mirrorsync",
                        scenario=f"scale-{n}-{scenario}",
                        round=1,
                        argv=[binary, "sync", "--once", "--config", cfg, "--log-format", "json", "--metrics-file", metrics],
                    )
                    run_measured(run, os.path.join(workdir, f"scale-{n}-{mode}-{scenario}.log"), [upstream, target])
                    row = {
                        "tags": n,
                        "mode": mode,
                        "scenario": scenario,
                        "rc": run.rc,
                        "wall": run.wall,
                        "cpu": run.cpu,
                        "maxrss": run.maxrss,
                        "series": count_series(metrics),
                        "registry_cpu": sum(run.registry_cpu.values()),
                    }
                    rows.append(row)
                    log(
                        f"   {n:>7,} tags {mode:11s} {scenario:6s} rc={run.rc} wall={run.wall:7.2f}s cpu={run.cpu:6.2f}s "
                        f"rss={run.maxrss / 2**20:6.1f}MiB series={row['series']:,}"
                    )
                target.stop()
                shutil.rmtree(tstore, ignore_errors=True)
            upstream.stop()
            shutil.rmtree(storage, ignore_errors=True)
    finally:
        target.stop()
        upstream.stop()
    return rows


def problems(rows: list[dict]) -> list[str]:
    return [f"scale: {r['tags']} tags, {r['mode']}, {r['scenario']}: exit code {r['rc']}" for r in rows if r["rc"] != 0]


def _svg(rows: list[dict], path: str) -> None:
    """RSS and CPU per tag against the list size (log scale), cold and no-op, default mode."""
    pts = [r for r in rows if r["mode"] == "all" and r["rc"] == 0]
    sizes = sorted({r["tags"] for r in pts})
    if len(sizes) < 2:
        return
    import math

    w, h, pad = 640, 300, 50
    x0, x1 = math.log10(sizes[0]), math.log10(sizes[-1])

    def x(n):
        return pad + (math.log10(n) - x0) / ((x1 - x0) or 1) * (w - 2 * pad)

    series = [
        ("cold: KiB of peak RSS per tag", "cold", lambda r: r["maxrss"] / 1024 / r["tags"], "#1f77b4"),
        ("no-op: KiB of peak RSS per tag", "no-op", lambda r: r["maxrss"] / 1024 / r["tags"], "#aec7e8"),
        ("cold: ms of CPU per tag", "cold", lambda r: r["cpu"] * 1000 / r["tags"], "#d62728"),
        ("no-op: ms of CPU per tag", "no-op", lambda r: r["cpu"] * 1000 / r["tags"], "#ff9896"),
    ]
    ymax = max(f(r) for _, sc, f, _ in series for r in pts if r["scenario"] == sc) * 1.1 or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">']
    out.append(f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>')
    out.append(f'<line x1="{pad}" y1="{pad / 2}" x2="{pad}" y2="{h - pad}" stroke="black"/>')
    for n in sizes:
        out.append(f'<text x="{x(n):.0f}" y="{h - pad + 15}" text-anchor="middle">{n:,} tags</text>')
    out.append(f'<text x="{pad - 5}" y="{pad / 2 + 4}" text-anchor="end">{ymax:.1f}</text>')
    out.append(f'<text x="{pad - 5}" y="{h - pad}" text-anchor="end">0</text>')
    for k, (label, sc, f, color) in enumerate(series):
        line = [(x(r["tags"]), h - pad - f(r) / ymax * (h - 1.5 * pad)) for r in sorted(pts, key=lambda r: r["tags"]) if r["scenario"] == sc]
        out.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(color, " ".join(f"{a:.1f},{b:.1f}" for a, b in line)))
        out.append(f'<text x="{w - pad - 200}" y="{pad / 2 + 14 * k + 10}" fill="{color}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def render(rows: list[dict], meta: dict, figure: str | None) -> str:
    m = meta["machine"]
    machine = f"{m['nproc']} cores, {m['memory'] / 2**30:.0f} GiB, {m['cpu']}"
    lines = [
        "## Scale: cost per tag against the list's length",
        "",
        f"`{meta['command']}` on {meta['date']} ({meta['provenance']}); {machine}. Loopback, default settings, N small tags "
        "(`bench/mirrorbench/scale.py`: one shared layer, a config and a manifest of their own each) in "
        "repositories of 1,000 tags, chosen with `tags: [{all: true}]`; series counted in the `--metrics-file` "
        "output (every line that is not a comment).",
        "",
        "| tags | series mode | scenario | wall | CPU of mirrorsync | CPU per tag | peak RSS | RSS per tag | series exported | series per 1,000 tags |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_tag = r["cpu"] * 1000 / r["tags"]
        lines.append(
            f"| {r['tags']:,} | {r['mode']} | {r['scenario']} | {r['wall']:.2f} s | {r['cpu']:.2f} s | {per_tag:.3f} ms | "
            f"{r['maxrss'] / 2**20:.1f} MiB | {r['maxrss'] / 1024 / r['tags']:.2f} KiB | {r['series']:,} | {r['series'] * 1000 / r['tags']:,.0f} |"
        )
    lines.append("")
    if figure:
        lines += [f"![peak RSS and CPU per tag against the list size]({figure})", ""]
    return "\n".join(lines)


def write(path: str, text: str) -> None:
    """Replaces only the scale section of the report (added before the analysis if missing)."""
    old = open(path).read() if os.path.exists(path) else ""
    block = f"{SCALE_BEGIN}\n{text}\n{SCALE_END}"
    if SCALE_BEGIN in old and SCALE_END in old:
        i, j = old.index(SCALE_BEGIN), old.index(SCALE_END) + len(SCALE_END)
        new = old[:i] + block + old[j:]
    else:
        marker = "<!-- analysis"
        i = old.find(marker)
        new = old[:i] + block + "\n\n" + old[i:] if i >= 0 else old + ("\n" if old else "") + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def figure(rows: list[dict], out_dir: str, fig_dir: str) -> str | None:
    os.makedirs(fig_dir, exist_ok=True)
    path = os.path.join(fig_dir, "scale.svg")
    _svg(rows, path)
    return os.path.relpath(path, out_dir) if os.path.exists(path) else None
