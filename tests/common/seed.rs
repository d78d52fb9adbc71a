//! Seeding registries with raw API calls (independent of the code under test).
//!
//! The `Client` methods return errors (so a test can check a denial); the free functions take a
//! [`Registry`], use its harness client, and panic with context on any failure.

use std::collections::BTreeMap;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::client::Client;
use super::image::{
    Descriptor, Format, IN_TOTO, ImageSpec, Layer, OCI_CONFIG, OCI_MANIFEST, Platform, PushedImage,
};
use super::registry::Registry;
use super::util::{DataGen, Sha256, sha256_digest};

/// Chunk size of PATCH uploads for big blobs (a multiple of 8).
pub const CHUNK: usize = 8 << 20;

fn location(resp: &Response) -> anyhow::Result<String> {
    let loc = resp
        .headers()
        .get("location")
        .context("upload response without Location")?;
    Ok(loc.to_str()?.to_string())
}

async fn expect_status(resp: Response, want: StatusCode, what: &str) -> anyhow::Result<Response> {
    if resp.status() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    bail!("{what}: expected {want}, got {status}: {body}")
}

impl Client {
    /// `POST /v2/<repo>/blobs/uploads/`: returns the upload URL (`Location`, resolved).
    pub async fn start_upload(&self, repo: &str) -> anyhow::Result<String> {
        let resp = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                None,
            )
            .await?;
        let resp = expect_status(resp, StatusCode::ACCEPTED, "start upload").await?;
        Ok(self.url(&location(&resp)?).to_string())
    }

    /// Completes an upload: `PUT <location>&digest=<d>` (query state in Location kept).
    pub async fn finish_upload(&self, loc: &str, digest: &str, body: Bytes) -> anyhow::Result<()> {
        let mut url = self.url(loc);
        url.query_pairs_mut().append_pair("digest", digest);
        let len = body.len().to_string();
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", len.as_str()),
        ];
        let resp = self
            .send(Method::PUT, url.as_str(), &headers, Some(body))
            .await?;
        expect_status(resp, StatusCode::CREATED, "finish upload").await?;
        Ok(())
    }

    /// Monolithic upload of `bytes` (POST, then PUT with the body and `digest`).
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> anyhow::Result<Descriptor> {
        let digest = sha256_digest(bytes);
        let loc = self.start_upload(repo).await?;
        self.finish_upload(&loc, &digest, Bytes::copy_from_slice(bytes))
            .await?;
        Ok(Descriptor {
            media_type: "application/octet-stream".into(),
            digest,
            size: bytes.len() as u64,
        })
    }

    /// Chunked upload of `size` deterministic bytes for `seed`: PATCHes of [`CHUNK`] bytes with
    /// `Content-Range: start-end` (inclusive), hashing as it goes, then `PUT ?digest=`.
    /// Memory stays at one chunk whatever the size.
    pub async fn push_big_blob(
        &self,
        repo: &str,
        size: u64,
        seed: u64,
    ) -> anyhow::Result<Descriptor> {
        let mut loc = self.start_upload(repo).await?;
        let mut data = DataGen::new(seed);
        let mut hash = Sha256::new();
        let mut offset = 0u64;
        while offset < size {
            let n = (size - offset).min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; n];
            data.fill(&mut buf);
            hash.update(&buf);
            let range = format!("{}-{}", offset, offset + n as u64 - 1);
            let len = n.to_string();
            let headers = [
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", range.as_str()),
                ("Content-Length", len.as_str()),
            ];
            let resp = self
                .send(Method::PATCH, &loc, &headers, Some(Bytes::from(buf)))
                .await?;
            let resp = expect_status(resp, StatusCode::ACCEPTED, "PATCH chunk").await?;
            loc = self.url(&location(&resp)?).to_string();
            offset += n as u64;
        }
        let digest = hash.finish();
        self.finish_upload(&loc, &digest, Bytes::new()).await?;
        Ok(Descriptor {
            media_type: "application/octet-stream".into(),
            digest,
            size,
        })
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `Content-Type: media_type`; returns the
    /// digest (computed from the bytes, checked against `Docker-Content-Digest`).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        let digest = sha256_digest(bytes);
        let headers = [("Content-Type", media_type)];
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(
                Method::PUT,
                &path,
                &headers,
                Some(Bytes::copy_from_slice(bytes)),
            )
            .await?;
        let resp = expect_status(resp, StatusCode::CREATED, &format!("PUT {path}")).await?;
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            ensure!(d == digest, "registry says {d}, bytes hash to {digest}");
        }
        Ok(digest)
    }

    /// Pushes layers, config and manifest (by digest, then `tag` if given).
    pub async fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        spec: &ImageSpec,
    ) -> anyhow::Result<PushedImage> {
        let mut layers = Vec::new();
        for l in &spec.layers {
            let d = match l {
                Layer::Bytes(b) => self.push_blob(repo, b).await?,
                Layer::Generated { size, seed } => self.push_big_blob(repo, *size, *seed).await?,
            };
            layers.push(d.with_media_type(spec.format.layer_type()));
        }
        let config = config_json(&spec.platform, &layers, &spec.labels);
        let config = self
            .push_blob(repo, &config)
            .await?
            .with_media_type(spec.format.config_type());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": spec.format.manifest_type(),
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&manifest)?;
        let mt = spec.format.manifest_type();
        let digest = self
            .push_manifest(repo, &sha256_digest(&bytes), mt, &bytes)
            .await?;
        if let Some(t) = tag {
            self.push_manifest(repo, t, mt, &bytes).await?;
        }
        let mut blobs = vec![config];
        blobs.extend(layers);
        Ok(PushedImage {
            digest,
            manifest_bytes: bytes,
            media_type: mt.to_string(),
            blobs,
            platform: Some(spec.platform.clone()),
            annotations: BTreeMap::new(),
        })
    }

    /// Pushes an index / manifest list over `children` (each first pushed by digest into
    /// `repo`). A child's platform is the given one, else its own; its annotations are kept.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: Option<&str>,
        format: Format,
        children: &[(PushedImage, Option<Platform>)],
    ) -> anyhow::Result<PushedImage> {
        let mut entries = Vec::new();
        let mut blobs: Vec<Descriptor> = Vec::new();
        for (child, platform) in children {
            self.push_manifest(
                repo,
                &child.digest,
                &child.media_type,
                &child.manifest_bytes,
            )
            .await?;
            let mut e = child.descriptor().to_json();
            if let Some(p) = platform.as_ref().or(child.platform.as_ref()) {
                e["platform"] = p.to_json();
            }
            if !child.annotations.is_empty() {
                e["annotations"] = json!(child.annotations);
            }
            entries.push(e);
            for b in &child.blobs {
                if !blobs.iter().any(|x| x.digest == b.digest) {
                    blobs.push(b.clone());
                }
            }
        }
        let index =
            json!({"schemaVersion": 2, "mediaType": format.index_type(), "manifests": entries});
        let bytes = serde_json::to_vec_pretty(&index)?;
        let mt = format.index_type();
        let digest = self
            .push_manifest(repo, &sha256_digest(&bytes), mt, &bytes)
            .await?;
        if let Some(t) = tag {
            self.push_manifest(repo, t, mt, &bytes).await?;
        }
        Ok(PushedImage {
            digest,
            manifest_bytes: bytes,
            media_type: mt.to_string(),
            blobs,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    /// A buildx-style attestation manifest for `subject` (pushed by digest): OCI manifest with
    /// one `application/vnd.in-toto+json` layer, listed as `unknown/unknown` with
    /// `vnd.docker.reference.type: attestation-manifest` and `vnd.docker.reference.digest`.
    pub async fn attestation_manifest(
        &self,
        repo: &str,
        subject: &PushedImage,
    ) -> anyhow::Result<PushedImage> {
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{"name": "_", "digest": {"sha256": subject.digest.trim_start_matches("sha256:")}}],
            "predicate": {"spdxVersion": "SPDX-2.3", "name": "mirrorsync-test-sbom"},
        });
        let layer_bytes = serde_json::to_vec(&statement)?;
        let layer = self
            .push_blob(repo, &layer_bytes)
            .await?
            .with_media_type(IN_TOTO);
        let config = config_json(
            &Platform::unknown(),
            std::slice::from_ref(&layer),
            &BTreeMap::new(),
        );
        let config = self
            .push_blob(repo, &config)
            .await?
            .with_media_type(OCI_CONFIG);
        let mut layer_json = layer.to_json();
        layer_json["annotations"] =
            json!({"in-toto.io/predicate-type": "https://spdx.dev/Document"});
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer_json],
        });
        let bytes = serde_json::to_vec_pretty(&manifest)?;
        let digest = self
            .push_manifest(repo, &sha256_digest(&bytes), OCI_MANIFEST, &bytes)
            .await?;
        let annotations = BTreeMap::from([
            (
                "vnd.docker.reference.digest".to_string(),
                subject.digest.clone(),
            ),
            (
                "vnd.docker.reference.type".to_string(),
                "attestation-manifest".to_string(),
            ),
        ]);
        Ok(PushedImage {
            digest,
            manifest_bytes: bytes,
            media_type: OCI_MANIFEST.to_string(),
            blobs: vec![config, layer],
            platform: Some(Platform::unknown()),
            annotations,
        })
    }
}

/// Image config JSON: architecture/os(/variant), rootfs diff_ids (the layers' digests: test
/// layers are treated as uncompressed), labels, fixed timestamps (deterministic).
pub fn config_json(
    p: &Platform,
    layers: &[Descriptor],
    labels: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut v: Value = json!({
        "architecture": p.architecture,
        "os": p.os,
        "created": "2024-01-01T00:00:00Z",
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        "history": layers.iter().enumerate()
            .map(|(i, _)| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("test layer {i}")}))
            .collect::<Vec<_>>(),
    });
    if let Some(var) = &p.variant {
        v["variant"] = json!(var);
    }
    serde_json::to_vec(&v).expect("config json")
}

/// Uploads `bytes` as a blob of `repo`.
pub async fn push_blob(reg: &Registry, repo: &str, bytes: &[u8]) -> Descriptor {
    reg.client()
        .push_blob(repo, bytes)
        .await
        .unwrap_or_else(|e| panic!("push_blob {repo}: {e:#}"))
}

/// Streams `size` deterministic bytes (seed) as a blob of `repo` in PATCH chunks.
pub async fn push_big_blob(reg: &Registry, repo: &str, size: u64, seed: u64) -> Descriptor {
    reg.client()
        .push_big_blob(repo, size, seed)
        .await
        .unwrap_or_else(|e| panic!("push_big_blob {repo} {size}: {e:#}"))
}

/// PUTs a manifest; returns its digest.
pub async fn push_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    reg.client()
        .push_manifest(repo, reference, media_type, bytes)
        .await
        .unwrap_or_else(|e| panic!("push_manifest {repo}:{reference}: {e:#}"))
}

/// Pushes an image; `tag` may be `None` (by digest only) or `"v1"`.
pub async fn push_image<'a>(
    reg: &Registry,
    repo: &str,
    tag: impl Into<Option<&'a str>>,
    spec: ImageSpec,
) -> PushedImage {
    let tag = tag.into();
    reg.client()
        .push_image(repo, tag, &spec)
        .await
        .unwrap_or_else(|e| panic!("push_image {repo}:{tag:?}: {e:#}"))
}

/// Pushes an index / manifest list over `children`.
pub async fn push_index<'a>(
    reg: &Registry,
    repo: &str,
    tag: impl Into<Option<&'a str>>,
    format: Format,
    children: &[(PushedImage, Option<Platform>)],
) -> PushedImage {
    let tag = tag.into();
    reg.client()
        .push_index(repo, tag, format, children)
        .await
        .unwrap_or_else(|e| panic!("push_index {repo}:{tag:?}: {e:#}"))
}

/// Pushes a buildx-style attestation manifest for `subject` (by digest).
pub async fn attestation_manifest(
    reg: &Registry,
    repo: &str,
    subject: &PushedImage,
) -> PushedImage {
    reg.client()
        .attestation_manifest(repo, subject)
        .await
        .unwrap_or_else(|e| panic!("attestation_manifest {repo}: {e:#}"))
}

/// A two-platform image under one index, as [`push_multi_arch`] pushed it.
pub struct MultiArch {
    pub first: PushedImage,
    pub second: PushedImage,
    /// The attestation manifests, in the order asked for.
    pub attestations: Vec<PushedImage>,
    pub index: PushedImage,
}

/// Pushes `first` and `second` into `repo` by digest, a buildx-style attestation manifest for
/// each child named in `attest` (0: first, 1: second), then the index (OCI) or manifest list
/// (Docker) `repo:tag` over the two images and then the attestations.
pub async fn push_multi_arch(
    reg: &Registry,
    repo: &str,
    tag: &str,
    format: Format,
    (first, second): (ImageSpec, ImageSpec),
    attest: &[usize],
) -> MultiArch {
    let first = push_image(reg, repo, None, first).await;
    let second = push_image(reg, repo, None, second).await;
    let mut attestations = Vec::new();
    for &i in attest {
        let subject = if i == 0 { &first } else { &second };
        attestations.push(attestation_manifest(reg, repo, subject).await);
    }
    let mut children = vec![(first.clone(), None), (second.clone(), None)];
    children.extend(attestations.iter().map(|a| (a.clone(), None)));
    let index = push_index(reg, repo, tag, format, &children).await;
    MultiArch {
        first,
        second,
        attestations,
        index,
    }
}
