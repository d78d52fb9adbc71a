"""The air-gap delta: how much smaller an incremental carry is than a full one.

The standard corpus is exported to an OCI layout with digests kept (`target: {path: full,
digests: preserve}`); then `library/web:1.26` is rebuilt upstream (one new top layer, a new config
and attestation: `corpus.move_tag`) and the same images are exported again as a delta against the
first export (`target: {path: delta, digests: preserve, since: full}`). Reported: the bytes of
each export's blob store, how many blobs each holds, and what the moved tag added (the ideal
delta). Run with `bench/delta` (the corpus of `bench/run --smoke` with `--smoke`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from . import corpus as corpus_mod
from .client import Client
from .layers import LayerFactory
from .registry import Registry

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def blob_store(layout_root: str) -> tuple[int, int]:
    """(blobs, bytes) under every `blobs/sha256` of a layout tree (one layout per repository)."""
    count = size = 0
    for dirpath, _dirs, files in os.walk(layout_root):
        if os.path.basename(dirpath) == "sha256" and os.path.basename(os.path.dirname(dirpath)) == "blobs":
            for f in files:
                count += 1
                size += os.path.getsize(os.path.join(dirpath, f))
    return count, size


def export(binary: str, upstream: Registry, corpus, workdir: str, name: str, since: str | None) -> str:
    """Exports every corpus tag into `workdir/name`; returns the layout root."""
    root = os.path.join(workdir, name)
    lines = [f"target:\n  path: \"{root}\"\n  digests: preserve\n"]
    if since:
        lines.append(f"  since: \"{since}\"\n")
    lines.append(f"registries:\n  \"{upstream.host}\":\n    insecure: true\nimages:\n")
    for t in corpus.tags:
        lines.append(f"  - {upstream.host}/{t.repo}:{t.tag}\n")
    cfg = os.path.join(workdir, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write("".join(lines))
    done = subprocess.run([binary, "sync", "--once", "--config", cfg], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"export {name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return root


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    binary = os.path.join(REPO_ROOT, "target", "release", "mirrorsync")
    workdir = tempfile.mkdtemp(prefix="mirrorsync-delta-")
    upstream = Registry("delta-upstream", workdir)
    try:
        upstream.start(os.path.join(workdir, "storage", "upstream"))
        factory = LayerFactory(os.path.join(REPO_ROOT, "target", "bench-cache"), log=lambda m: None)
        sizes = corpus_mod.SMOKE if smoke else corpus_mod.FULL
        corpus = corpus_mod.seed(Client(upstream.host), factory, sizes, log=lambda m: None)
        full = export(binary, upstream, corpus, workdir, "full", None)
        added = corpus_mod.move_tag(corpus, 1)
        delta = export(binary, upstream, corpus, workdir, "delta", full)
    finally:
        upstream.stop()
    fb, fs = blob_store(full)
    db, ds = blob_store(delta)
    ideal = sum(added.values())
    print(f"corpus: {'smoke' if smoke else 'full'}, {len(corpus.tags)} tags, one moved (library/web:1.26)")
    print("| export | blobs | bytes |")
    print("|---|---:|---:|")
    print(f"| full (`digests: preserve`) | {fb} | {fs:,} |")
    print(f"| delta (`since:` the full one) | {db} | {ds:,} |")
    print(f"| new layers, configs and attestation blobs of the moved tag (the delta adds its 3 new manifests) | {len(added)} | {ideal:,} |")
    print(f"delta / full: {ds / fs:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
