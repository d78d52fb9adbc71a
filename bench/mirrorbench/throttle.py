"""bench/throttle: mirrorsync against registries that cap the request rate.

A `ratecap.RateCapProxy` (token bucket, `--rate` per second, `--burst`; 429 above it, with or
without `Retry-After`) sits in front of the upstream or of the target `docker-registry`.
mirrorsync syncs `--tags` small tags with default settings into an empty target. Figures per
case: tags landed (checked at the target registry itself), requests let through and refused,
the 429 share, the run's wall time and that time over the ideal (requests let through / rate).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .client import OCI_LAYER, Client
from .corpus import Seeder
from .layers import blob_of
from .main import REPO_ROOT, build
from .ratecap import RateCapProxy
from .registry import Registry

PLATFORM = {"os": "linux", "architecture": "amd64"}
SIDES = ("upstream", "target")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/throttle", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=25.0, help="requests per second allowed (default 25)")
    p.add_argument("--burst", type=int, default=25, help="token bucket size (default 25)")
    p.add_argument("--tags", type=int, default=57, help="tags to sync (default 57, 3 per repository)")
    p.add_argument("--binary", action="append", default=[], help="benchmark this binary (repeatable; default: build the working tree)")
    p.add_argument("--output", default=os.path.join(REPO_ROOT, "target", "bench", "throttle.md"), help="markdown report (default target/bench/throttle.md)")
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    return p.parse_args(argv)


def seed(client: Client, tags: int) -> list[tuple[str, str, str]]:
    """`tags` tags, 3 per repository; each image: a base layer shared in its repository, a
    layer of its own, a config."""
    seeder = Seeder(client)
    out = []
    for k in range(tags):
        repo = f"throttled/app{k // 3:02d}"
        base = blob_of(f"base {k // 3}".encode() * 400, OCI_LAYER)
        own = blob_of(f"layer {k}".encode() * (200 + 37 * k), OCI_LAYER)
        tag = f"v{k % 3}"
        m = seeder.image(repo, "oci", PLATFORM, [base, own], labels={"k": str(k)}, ref=tag)
        out.append((repo, tag, m.digest))
    return out


def run_case(binary, side, retry_after, args, workdir, upstream, tags) -> dict:
    target = Registry(f"target-{side}-{int(retry_after)}-{len(os.listdir(workdir))}", workdir)
    target.start(os.path.join(target.dir, "storage"))
    proxy = RateCapProxy(upstream.host if side == "upstream" else target.host, args.rate, args.burst, retry_after)
    proxy.start()
    try:
        src = proxy.host if side == "upstream" else upstream.host
        dst = proxy.host if side == "target" else target.host
        lines = [f'target:\n  registry: "{dst}"\n  insecure: true\n', f'registries:\n  "{src}":\n    insecure: true\n', "images:\n"]
        lines += [f"  - {src}/{repo}:{tag}\n" for repo, tag, _ in tags]
        config = os.path.join(target.dir, "sync.yaml")
        with open(config, "w") as f:
            f.write("".join(lines))
        log = os.path.join(target.dir, "mirrorsync.log")
        started = time.monotonic()
        with open(log, "wb") as out:
            code = subprocess.call([binary, "sync", "--once", "--config", config], stdout=out, stderr=subprocess.STDOUT)
        took = time.monotonic() - started
        passed, refused = proxy.counts()
    finally:
        proxy.stop()
    check = Client(target.host)
    landed = sum(1 for repo, tag, digest in tags if check.head_manifest(repo, tag) == digest)
    target.stop()
    ideal = passed / args.rate
    return {
        "side": side,
        "retry_after": retry_after,
        "exit": code,
        "landed": landed,
        "tags": len(tags),
        "passed": passed,
        "refused": refused,
        "share": refused / passed if passed else 0.0,
        "seconds": took,
        "ideal": ideal,
        "ratio": took / ideal if ideal else 0.0,
    }


def render(results: dict[str, list[dict]], args) -> str:
    out = [
        "# Throttled registries (bench/throttle)\n\n",
        f"A registry allowing {args.rate:g} requests/s (token bucket of {args.burst}; 429 above it) in front of the "
        f"upstream or the target; {args.tags} small tags synced with default settings into an empty target. "
        "Ideal time = requests let through / allowed rate. Targets: every tag lands, 429s under 10% of the "
        "requests let through, time at most 1.3x the ideal.\n\n",
        "| binary | throttled side | Retry-After | tags landed | exit | let through | 429 | 429 share | time | ideal | time / ideal |\n",
        "|---|---|---|---|---|---|---|---|---|---|---|\n",
    ]
    for name, rows in results.items():
        for r in rows:
            out.append(
                f"| {name} | {r['side']} | {'yes' if r['retry_after'] else 'no'} | {r['landed']}/{r['tags']} | {r['exit']} "
                f"| {r['passed']} | {r['refused']} | {100 * r['share']:.1f}% | {r['seconds']:.1f} s | {r['ideal']:.1f} s | {r['ratio']:.2f} |\n"
            )
    return "".join(out)


def main(argv=None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    binaries = args.binary or [build(None)[0]]
    workdir = tempfile.mkdtemp(prefix="mirrorsync-throttle-")
    upstream = Registry("upstream", workdir)
    upstream.start(os.path.join(upstream.dir, "storage"))
    results: dict[str, list[dict]] = {}
    try:
        tags = seed(Client(upstream.host), args.tags)
        for binary in binaries:
            name = os.path.relpath(binary, REPO_ROOT) if binary.startswith(REPO_ROOT) else binary
            rows = results.setdefault(name, [])
            for side in SIDES:
                for retry_after in (False, True):
                    r = run_case(binary, side, retry_after, args, workdir, upstream, tags)
                    rows.append(r)
                    print(json.dumps({"binary": name, **r}), flush=True)
    finally:
        upstream.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"workdir kept: {workdir}")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(render(results, args))
    print(f"report: {args.output}")
    ok = all(r["landed"] == r["tags"] and r["share"] < 0.10 and r["ratio"] <= 1.3 for r in results[list(results)[-1]])
    return 0 if ok else 1
