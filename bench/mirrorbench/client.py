"""A small registry API client over http.client (keep-alive), for seeding and verifying.

It is independent of the code under test: uploads are POST + PUT ?digest= (monolithic),
cross-repository mounts are POST ?mount=&from=, manifests are PUT with their media type.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import threading
import urllib.parse

HARNESS_UA = "mirrorsync-bench-harness"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryError(Exception):
    pass


class Client:
    """One keep-alive connection per thread to one registry."""

    def __init__(self, host: str, ca_file: str | None = None):
        """`ca_file`: speak HTTPS, trusting only the certificates in that file."""
        self.host = host
        self._tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self._tls is not None:
                c = http.client.HTTPSConnection(self.host, timeout=600, blocksize=1 << 20, context=self._tls)
            else:
                c = http.client.HTTPConnection(self.host, timeout=600, blocksize=1 << 20)
            self._local.conn = c
        return c

    def _drop(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
        self._local.conn = None

    def request(self, method, path, body=None, headers=None, expect=(200,)):
        """Sends a request; returns (status, headers, body). Retries once on a dropped
        keep-alive connection when the body can be re-sent."""
        h = {"User-Agent": HARNESS_UA}
        h.update(headers or {})
        if body is None and method in ("POST", "PUT", "PATCH"):
            h.setdefault("Content-Length", "0")
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=h)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, ConnectionError, OSError):
                self._drop()
                resendable = body is None or isinstance(body, (bytes, bytearray))
                if attempt == 1 or not resendable:
                    raise
        if expect and resp.status not in expect:
            raise RegistryError(
                f"{method} {path} -> {resp.status}: {data[:500].decode(errors='replace')}"
            )
        return resp.status, resp.headers, data

    @staticmethod
    def _path_of(location: str) -> str:
        u = urllib.parse.urlsplit(location)
        return u.path + ("?" + u.query if u.query else "")

    # --- blobs -----------------------------------------------------------------------------
    def blob_exists(self, repo: str, digest: str) -> bool:
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", expect=(200, 404))
        return status == 200

    def mount_blob(self, repo: str, digest: str, source_repo: str) -> bool:
        q = urllib.parse.urlencode({"mount": digest, "from": source_repo})
        status, headers, _ = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/?{q}", expect=(201, 202)
        )
        if status == 201:
            return True
        self.request("DELETE", self._path_of(headers["Location"]), expect=(204, 404))
        return False

    def push_blob(self, repo: str, digest: str, size: int, data=None, path=None) -> None:
        """Monolithic upload: POST, then PUT ?digest= with the whole body (bytes or a file)."""
        _, headers, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        loc = self._path_of(headers["Location"])
        sep = "&" if "?" in loc else "?"
        put = f"{loc}{sep}digest={urllib.parse.quote(digest)}"
        h = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if path is not None:
            with open(path, "rb") as f:
                self.request("PUT", put, body=f, headers=h, expect=(201,))
        else:
            self.request("PUT", put, body=bytes(data), headers=h, expect=(201,))

    # --- manifests -------------------------------------------------------------------------
    def put_manifest(self, repo: str, ref: str, media_type: str, data: bytes) -> str:
        digest = sha256_digest(data)
        _, headers, _ = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            body=data,
            headers={"Content-Type": media_type},
            expect=(201,),
        )
        said = headers.get("Docker-Content-Digest")
        if said and said != digest:
            raise RegistryError(f"PUT {repo}:{ref}: registry says {said}, bytes hash to {digest}")
        return digest

    def head_manifest(self, repo: str, ref: str) -> str | None:
        status, headers, _ = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{ref}",
            headers={"Accept": MANIFEST_ACCEPT},
            expect=(200, 404),
        )
        return headers.get("Docker-Content-Digest") if status == 200 else None

    def get_manifest(self, repo: str, ref: str) -> tuple[str, bytes]:
        _, headers, data = self.request(
            "GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
        )
        return headers.get("Content-Type", ""), data


def to_json_bytes(value) -> bytes:
    return json.dumps(value, indent=3).encode()
