"""The protocol floor of a cold sync: what the two registries spend on the requests that every
mirroring tool has to make, whatever it does about round trips.

That is one GET per manifest and per blob upstream, and at the target a POST and a PUT per blob
(a cross-repository mount when another repository already got it), and a PUT per manifest,
children before their index. No HEAD, no existence check, no retry: a client that already knows
the target is empty. Run with as many requests at once as mirrorsync's defaults allow (32).

Only the registries' CPU is read from it (the harness's own Python is slow and is not the
point): where the registries' CPU divided by the machine's cores exceeds a target time, no
client can meet that target on that machine.
"""

from __future__ import annotations

import json
import queue
import threading

from .client import MANIFEST_ACCEPT, Client

WORKERS = 32


def _each(work: list, fn, workers: int = WORKERS) -> None:
    """Calls fn on every item from `workers` threads; the first error is raised."""
    todo: queue.Queue = queue.Queue()
    for w in work:
        todo.put(w)
    errors: list[BaseException] = []

    def run() -> None:
        while not errors:
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                fn(item)
            except BaseException as e:  # reported by the caller
                errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(min(workers, max(1, len(work))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def copy_minimal(upstream: Client, target: Client, tags: list[tuple[str, str]]) -> dict:
    """Copies `tags` ((repository, tag) pairs) from upstream to an empty target with the
    minimal request set; returns the request counts by kind."""
    up, tg = upstream, target
    manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
    lock = threading.Lock()

    def get(key: tuple[str, str]) -> None:
        _, headers, data = up.request("GET", f"/v2/{key[0]}/manifests/{key[1]}", headers={"Accept": MANIFEST_ACCEPT})
        with lock:
            manifests[key] = (headers.get("Content-Type", ""), data)

    _each(tags, get)
    children = sorted(
        {(repo, child["digest"]) for (repo, _), (_, data) in list(manifests.items()) for child in json.loads(data).get("manifests", [])}
    )
    _each(children, get)

    # (repository, blob) pairs in first-seen order; a blob another repository got first is mounted.
    first_repo: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    uploads, mounts = [], []
    for (repo, _), (_, data) in manifests.items():
        doc = json.loads(data)
        for blob in ([doc["config"]] if "config" in doc else []) + doc.get("layers", []):
            pair = (repo, blob["digest"])
            if pair in seen:
                continue
            seen.add(pair)
            if pair[1] in first_repo:
                mounts.append(pair)
            else:
                first_repo[pair[1]] = repo
                uploads.append(pair)

    def copy_blob(pair: tuple[str, str]) -> None:
        repo, digest = pair
        _, _, data = up.request("GET", f"/v2/{repo}/blobs/{digest}")
        tg.push_blob(repo, digest, len(data), data=data)

    _each(uploads, copy_blob)
    _each(mounts, lambda pair: tg.mount_blob(pair[0], pair[1], first_repo[pair[1]]))

    def put(key: tuple[str, str]) -> None:
        media_type, data = manifests[key]
        tg.put_manifest(key[0], key[1], media_type, data)

    child_keys = set(children)
    _each([k for k in manifests if k in child_keys], put)
    _each([k for k in manifests if k not in child_keys], put)
    return {
        "manifest_get": len(manifests),
        "blob_get": len(uploads),
        "blob_upload": len(uploads),
        "mount": len(mounts),
        "manifest_put": len(manifests),
    }
