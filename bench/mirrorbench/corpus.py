"""The benchmark corpus, seeded into the upstream registry through the registry API.

Every repository lives under `library/` (as on Docker Hub), so mirrorsync (prefix "") and skopeo
sync (destination `<target>/library`, which keeps the last path component) write the same
repositories at the target.

- library/web:1.25, library/web:1.26, library/api:2.0, library/worker:1: OCI indexes, linux/amd64
  and linux/arm64, each platform with a buildx-style attestation manifest; all share the per-arch
  base layer, web and api also share a runtime layer;
- library/legacy:3: a Docker manifest list (amd64, arm64, arm/v7) over schema2 manifests;
- library/cache:7.2 and library/cache:latest: two tags on one digest (Docker schema2);
- library/big:1: the base layer plus a 1 GiB layer (full corpus only);
- library/many:t0000..t0999: 1,000 small tags (shared base, one small layer of its own each);
- rss/layer<N>:1: one layer only, for the peak-RSS measurement (not part of the sync corpus).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .client import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IN_TOTO,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Client,
)
from .layers import Blob, LayerFactory, blob_of

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass
class Sizes:
    base: int
    base_armv7: int
    runtime: int
    app: int
    api_app: int
    worker_app: int
    legacy_app: int
    cache_app: int
    many_base: int
    many_layer: int
    many_tags: int
    big: int  # 0: no big image in the sync corpus
    rss: list[int]  # single-layer images for the RSS measurement
    incr: int  # the new layer of the moved tag


FULL = Sizes(
    base=28 * MiB,
    base_armv7=24 * MiB,
    runtime=12 * MiB,
    app=4 * MiB,
    api_app=6 * MiB,
    worker_app=2 * MiB,
    legacy_app=3 * MiB,
    cache_app=5 * MiB,
    many_base=3 * MiB,
    many_layer=4 * KiB,
    many_tags=1000,
    big=1 * GiB,
    rss=[256 * MiB, 1 * GiB],
    incr=2 * MiB,
)

SMOKE = Sizes(
    base=512 * KiB,
    base_armv7=384 * KiB,
    runtime=256 * KiB,
    app=64 * KiB,
    api_app=96 * KiB,
    worker_app=32 * KiB,
    legacy_app=48 * KiB,
    cache_app=64 * KiB,
    many_base=128 * KiB,
    many_layer=4 * KiB,
    many_tags=20,
    big=0,
    rss=[8 * MiB, 32 * MiB],
    incr=64 * KiB,
)

PLATFORMS = {
    "amd64": {"architecture": "amd64", "os": "linux"},
    "arm64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    "arm/v7": {"architecture": "arm", "os": "linux", "variant": "v7"},
}


@dataclass
class Manifest:
    media_type: str
    data: bytes
    digest: str
    blobs: list[Blob]  # every blob reachable from here (children included)
    platform: dict | None = None
    annotations: dict | None = None

    def descriptor(self) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        if self.platform:
            d["platform"] = self.platform
        if self.annotations:
            d["annotations"] = self.annotations
        return d


def _dumps(value) -> bytes:
    return json.dumps(value, indent=3).encode()


def config_json(platform: dict, layers: list[Blob], labels: dict | None = None) -> bytes:
    cfg = {
        "architecture": platform["architecture"],
        "os": platform["os"],
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": labels or {},
        },
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id or l.digest for l in layers]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"COPY layer {i} /"}
            for i in range(len(layers))
        ],
    }
    if "variant" in platform:
        cfg["variant"] = platform["variant"]
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()


class Seeder:
    """Pushes images; uploads each blob once per registry, mounts it into other repositories."""

    def __init__(self, client: Client):
        self.client = client
        self.lock = threading.Lock()
        self.holders: dict[str, list[str]] = {}
        self.uploaded_bytes = 0
        self.requests = 0

    def blob(self, repo: str, blob: Blob) -> None:
        with self.lock:
            holders = list(self.holders.get(blob.digest, []))
        if repo in holders:
            return
        if not (holders and self.client.mount_blob(repo, blob.digest, holders[0])):
            self.client.push_blob(repo, blob.digest, blob.size, data=blob.data, path=blob.path)
            with self.lock:
                self.uploaded_bytes += blob.size
        with self.lock:
            self.holders.setdefault(blob.digest, []).append(repo)

    def image(self, repo, fmt, platform, layers, labels=None, ref=None) -> Manifest:
        layer_type = OCI_LAYER if fmt == "oci" else DOCKER_LAYER
        layers = [l.typed(layer_type) for l in layers]
        for l in layers:
            self.blob(repo, l)
        config = blob_of(
            config_json(platform, layers, labels), OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG
        )
        self.blob(repo, config)
        mt = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
        body = {
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
            "layers": [
                {"mediaType": l.media_type, "digest": l.digest, "size": l.size} for l in layers
            ],
        }
        data = _dumps(body)
        digest = self.client.put_manifest(repo, ref or _digest(data), mt, data)
        return Manifest(mt, data, digest, [config, *layers], platform=platform)

    def attestation(self, repo: str, subject: Manifest, packages: list[str]) -> Manifest:
        """A buildx-style SBOM attestation manifest for `subject` (pushed by digest)."""
        statement = {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{"name": "_", "digest": {"sha256": subject.digest.split(":", 1)[1]}}],
            "predicate": {
                "spdxVersion": "SPDX-2.3",
                "name": "sbom",
                "packages": [
                    {"name": p, "versionInfo": "1.0", "SPDXID": f"SPDXRef-{i}"}
                    for i, p in enumerate(packages)
                ],
            },
        }
        layer = blob_of(json.dumps(statement, indent=2).encode(), IN_TOTO)
        self.blob(repo, layer)
        unknown = {"architecture": "unknown", "os": "unknown"}
        config = blob_of(config_json(unknown, [layer]), OCI_CONFIG)
        self.blob(repo, config)
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": [
                {
                    "mediaType": IN_TOTO,
                    "digest": layer.digest,
                    "size": layer.size,
                    "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
                }
            ],
        }
        data = _dumps(body)
        digest = self.client.put_manifest(repo, _digest(data), OCI_MANIFEST, data)
        return Manifest(
            OCI_MANIFEST,
            data,
            digest,
            [config, layer],
            platform=unknown,
            annotations={
                "vnd.docker.reference.digest": subject.digest,
                "vnd.docker.reference.type": "attestation-manifest",
            },
        )

    def index(self, repo: str, fmt: str, children: list[Manifest], ref: str) -> Manifest:
        mt = OCI_INDEX if fmt == "oci" else DOCKER_LIST
        data = _dumps({"schemaVersion": 2, "mediaType": mt, "manifests": [c.descriptor() for c in children]})
        digest = self.client.put_manifest(repo, ref, mt, data)
        blobs: dict[str, Blob] = {}
        for c in children:
            for b in c.blobs:
                blobs.setdefault(b.digest, b)
        return Manifest(mt, data, digest, list(blobs.values()))

    def tag(self, repo: str, tag: str, m: Manifest) -> None:
        self.client.put_manifest(repo, tag, m.media_type, m.data)


def _digest(data: bytes) -> str:
    from .client import sha256_digest

    return sha256_digest(data)


@dataclass
class Tag:
    repo: str
    tag: str
    manifest: Manifest


@dataclass
class Corpus:
    sizes: Sizes
    tags: list[Tag] = field(default_factory=list)  # the synced set, in config order
    rss: list[tuple[int, Tag]] = field(default_factory=list)  # (layer size, image)
    moved: Tag | None = None  # the tag the incremental scenario moves
    web_arm64: tuple[Manifest, Manifest] | None = None  # unchanged half of the moved index
    uploaded_bytes: int = 0

    def blobs(self) -> dict[str, int]:
        """digest -> size of every blob the synced tags reference (each once)."""
        out: dict[str, int] = {}
        for t in self.tags:
            for b in t.manifest.blobs:
                out[b.digest] = b.size
        return out

    def unique_blob_bytes(self) -> int:
        return sum(self.blobs().values())

    def repos(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.tags:
            out.setdefault(t.repo, []).append(t.tag)
        return out

    def manifest_count(self) -> int:
        seen = set()
        for t in self.tags:
            seen.add(t.manifest.digest)
        return len(seen)


def seed(client: Client, factory: LayerFactory, s: Sizes, log=print) -> Corpus:
    sd = Seeder(client)
    L = factory.layer
    corpus = Corpus(sizes=s)
    base = {
        "amd64": L("base-amd64", s.base),
        "arm64": L("base-arm64", s.base),
        "arm/v7": L("base-armv7", s.base_armv7),
    }
    runtime = {a: L(f"runtime-{a.replace('/', '')}", s.runtime) for a in ("amd64", "arm64")}

    def multiarch(repo, tag, app, size, with_runtime):
        images = []
        for arch in ("amd64", "arm64"):
            layers = [base[arch]] + ([runtime[arch]] if with_runtime else [])
            layers.append(L(f"{app}-{arch}", size))
            images.append(sd.image(repo, "oci", PLATFORMS[arch], layers, {"org.opencontainers.image.version": tag}))
        atts = [sd.attestation(repo, img, [f"{app}-pkg-{i}" for i in range(40)]) for img in images]
        idx = sd.index(repo, "oci", images + atts, tag)
        corpus.tags.append(Tag(repo, tag, idx))
        return images, atts

    log("  library/web, library/api, library/worker (OCI indexes with attestations)")
    multiarch("library/web", "1.25", "web-1.25", s.app, True)
    images, atts = multiarch("library/web", "1.26", "web-1.26", s.app, True)
    corpus.moved = corpus.tags[-1]
    corpus.web_arm64 = (images[1], atts[1])
    multiarch("library/api", "2.0", "api-2.0", s.api_app, True)
    multiarch("library/worker", "1", "worker-1", s.worker_app, False)

    log("  library/legacy (Docker manifest list), library/cache (two tags, one digest)")
    children = [
        sd.image("library/legacy", "docker", PLATFORMS[a], [base[a], L(f"legacy-{a.replace('/', '')}", s.legacy_app)])
        for a in ("amd64", "arm64", "arm/v7")
    ]
    corpus.tags.append(Tag("library/legacy", "3", sd.index("library/legacy", "docker", children, "3")))
    cache = sd.image("library/cache", "docker", PLATFORMS["amd64"], [base["amd64"], L("cache-amd64", s.cache_app)], ref="7.2")
    sd.tag("library/cache", "latest", cache)
    corpus.tags.append(Tag("library/cache", "7.2", cache))
    corpus.tags.append(Tag("library/cache", "latest", cache))

    if s.big:
        log(f"  library/big (a {s.big / GiB:.0f} GiB layer)")
        big = sd.image("library/big", "oci", PLATFORMS["amd64"], [base["amd64"], L("big", s.big)], ref="1")
        corpus.tags.append(Tag("library/big", "1", big))

    log(f"  library/many ({s.many_tags} tags)")
    many_base = L("many-base", s.many_base)
    layers = [L(f"many-{i:04d}", s.many_layer) for i in range(s.many_tags)]
    sd.blob("library/many", many_base.typed(OCI_LAYER))

    def one(i):
        tag = f"t{i:04d}"
        m = sd.image("library/many", "oci", PLATFORMS["amd64"], [many_base, layers[i]], {"build": tag}, ref=tag)
        return Tag("library/many", tag, m)

    with ThreadPoolExecutor(4) as pool:
        corpus.tags.extend(pool.map(one, range(s.many_tags)))

    for size in s.rss:
        layer = L("big", size) if size == s.big else L(f"rss-{size >> 20}m", size)
        repo = f"rss/layer{size >> 20}m"
        log(f"  {repo} (one {size / MiB:.0f} MiB layer, for the RSS measurement)")
        m = sd.image(repo, "oci", PLATFORMS["amd64"], [layer], ref="1")
        corpus.rss.append((size, Tag(repo, "1", m)))
    corpus.uploaded_bytes = sd.uploaded_bytes
    corpus.seeder = sd  # reused by move_tag
    corpus.factory = factory
    return corpus


def move_tag(corpus: Corpus, round_no: int) -> dict[str, int]:
    """Rebuilds library/web:1.26 upstream: the amd64 image gets one new top layer (so a new
    config and a new attestation); arm64 is unchanged. Returns the blobs no other synced tag had
    before (digest -> size): what an ideal incremental sync pulls."""
    s = corpus.sizes
    sd: Seeder = corpus.seeder
    L = corpus.factory.layer
    before = corpus.blobs()
    repo, tag = corpus.moved.repo, corpus.moved.tag
    layers = [
        L("base-amd64", s.base),
        L("runtime-amd64", s.runtime),
        L("web-1.26-amd64", s.app),
        L(f"incr-{round_no}", s.incr),
    ]
    img = sd.image(repo, "oci", PLATFORMS["amd64"], layers, {"org.opencontainers.image.version": tag, "rebuild": str(round_no)})
    att = sd.attestation(repo, img, [f"web-1.26-pkg-{i}" for i in range(40)] + [f"hotfix-{round_no}"])
    arm, arm_att = corpus.web_arm64
    idx = sd.index(repo, "oci", [img, arm, att, arm_att], tag)
    for i, t in enumerate(corpus.tags):
        if (t.repo, t.tag) == (repo, tag):
            corpus.tags[i] = Tag(repo, tag, idx)
            corpus.moved = corpus.tags[i]
    return {b.digest: b.size for b in idx.blobs if b.digest not in before}
