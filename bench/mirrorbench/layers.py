"""Layer blobs made from real files: gzip'd tar archives of files from /usr, deterministic.

A layer is named; its name picks where in the (sorted) file pool it starts, and files are added
until the compressed size reaches the layer's target. Every archive starts with a marker file
holding the layer's name, so two layers never share a digest. Timestamps, owners and gzip header
are fixed, so the same machine always builds the same bytes. Layers are cached under the cache
dir (they are slow to build: gzip level 6 runs at about 40 MB/s of input here); layers of
128 MiB and more use gzip level 1 (like `pigz -1`), about 3x faster for 10% more bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass

GEN_VERSION = 1
POOL_ROOTS = ("/usr/share", "/usr/lib", "/usr/bin")
MAX_FILE = 64 << 20
MTIME = 1704067200  # 2024-01-01T00:00:00Z
FAST_GZIP_FROM = 128 << 20


@dataclass
class Blob:
    """A blob to push: bytes in memory or a file in the cache."""

    digest: str
    size: int
    media_type: str = "application/octet-stream"
    data: bytes | None = None
    path: str | None = None
    diff_id: str | None = None  # sha256 of the uncompressed tar, for image configs

    def typed(self, media_type: str) -> "Blob":
        return Blob(self.digest, self.size, media_type, self.data, self.path, self.diff_id)


def blob_of(data: bytes, media_type: str) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), media_type, data=data)


class _Hashing(io.RawIOBase):
    """A write-only sink that counts and hashes what goes through to `inner` (if any)."""

    def __init__(self, inner=None):
        self.inner = inner
        self.n = 0
        self.h = hashlib.sha256()

    def writable(self):
        return True

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        if self.inner is not None:
            self.inner.write(b)
        return len(b)


class LayerFactory:
    def __init__(self, cache_dir: str, log=print):
        self.dir = os.path.join(cache_dir, f"layers-v{GEN_VERSION}")
        os.makedirs(self.dir, exist_ok=True)
        self._pool: list[tuple[str, int]] | None = None
        self.log = log
        self.built = 0
        self.reused = 0

    def pool(self) -> list[tuple[str, int]]:
        if self._pool is None:
            files = []
            for root in POOL_ROOTS:
                for dirpath, dirnames, filenames in os.walk(root):
                    dirnames.sort()
                    for name in sorted(filenames):
                        p = os.path.join(dirpath, name)
                        try:
                            st = os.lstat(p)
                        except OSError:
                            continue
                        if (st.st_mode & 0o170000) == 0o100000 and 0 < st.st_size <= MAX_FILE:
                            files.append((p, st.st_size))
            if not files:
                raise RuntimeError(f"no files under {POOL_ROOTS} to build layers from")
            self._pool = files
        return self._pool

    def layer(self, name: str, target: int) -> Blob:
        """The layer `name` of about `target` compressed bytes (built once, then cached)."""
        key = f"{name}-{target}"
        path = os.path.join(self.dir, key + ".tar.gz")
        meta_path = path + ".json"
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if os.path.getsize(path) == meta["size"]:
                self.reused += 1
                return Blob(meta["digest"], meta["size"], path=path, diff_id=meta["diff_id"])
        except (OSError, ValueError, KeyError):
            pass
        if target >= 32 << 20:
            self.log(f"  building layer {name} (~{target / 2**20:.0f} MiB of gzip'd files, cached for next runs)")
        meta = self._build(name, target, path + ".tmp")
        os.replace(path + ".tmp", path)
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f)
        os.replace(meta_path + ".tmp", meta_path)
        self.built += 1
        return Blob(meta["digest"], meta["size"], path=path, diff_id=meta["diff_id"])

    def _build(self, name: str, target: int, out_path: str) -> dict:
        pool = self.pool()
        start = int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) % len(pool)
        level = 1 if target >= FAST_GZIP_FROM else 6
        ratio_guess = 0.33 if level == 1 else 0.3
        with open(out_path, "wb") as out:
            compressed = _Hashing(out)
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=level, mtime=0)
            raw = _Hashing(gz)
            tar = tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT)

            def add(arcname: str, data: bytes, mode: int = 0o644) -> None:
                ti = tarfile.TarInfo(arcname)
                ti.size = len(data)
                ti.mode = mode
                ti.mtime = MTIME
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = "root"
                tar.addfile(ti, io.BytesIO(data))

            add(f"etc/mirrorsync-bench/{name}", f"{name}\n".encode())
            i, passes, skipped_in_a_row = start, 0, 0
            while max(compressed.n, int(raw.n * ratio_guess)) < target:
                p, size = pool[i]
                i += 1
                if i == len(pool):
                    i = 0
                if i == start:
                    passes += 1
                remaining = target - max(compressed.n, int(raw.n * ratio_guess))
                if size > max(16384, 4 * remaining):
                    skipped_in_a_row += 1
                    if skipped_in_a_row > len(pool):
                        break  # nothing small enough is left
                    continue
                skipped_in_a_row = 0
                try:
                    with open(p, "rb") as f:
                        data = f.read(MAX_FILE + 1)
                    mode = os.stat(p).st_mode & 0o755
                except OSError:
                    continue
                prefix = f"pass{passes}/" if passes else ""
                add(prefix + p.lstrip("/"), data, mode)
            tar.close()
            gz.close()
        return {
            "name": name,
            "target": target,
            "digest": "sha256:" + compressed.h.hexdigest(),
            "size": compressed.n,
            "diff_id": "sha256:" + raw.h.hexdigest(),
        }
