//! Independent checks of what a registry holds (harness client, or skopeo).

use std::collections::HashSet;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::bin::Output;
use super::image::{DOCKER_LIST, MANIFEST_ACCEPT, OCI_INDEX};
use super::registry::Registry;
use super::util::{Sha256, sha256_digest};

/// GETs a manifest with the full Accept list. `None` on 404; panics on other errors.
/// `method` on `/v2/<repo>/manifests/<reference>` (full Accept list): the response, `None` on
/// 404; panics on any other failure.
async fn manifest_request(
    reg: &Registry,
    method: Method,
    repo: &str,
    reference: &str,
) -> Option<reqwest::Response> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let resp = reg
        .client()
        .send(method.clone(), &path, &[("Accept", MANIFEST_ACCEPT)], None)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    if resp.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert!(
        resp.status().is_success(),
        "{method} {path}: {}",
        resp.status()
    );
    Some(resp)
}

/// Returns (exact bytes, Content-Type, digest recomputed from the bytes).
pub async fn get_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
) -> Option<(Vec<u8>, String, String)> {
    let resp = manifest_request(reg, Method::GET, repo, reference).await?;
    let mt = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.bytes().await.expect("manifest body").to_vec();
    let digest = sha256_digest(&bytes);
    Some((bytes, mt, digest))
}

/// HEADs a manifest (full Accept list): `Some(Docker-Content-Digest)` or `None` on 404.
pub async fn head_manifest(reg: &Registry, repo: &str, reference: &str) -> Option<String> {
    let resp = manifest_request(reg, Method::HEAD, repo, reference).await?;
    let d = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    Some(d.unwrap_or_default().to_string())
}

/// GETs a blob, hashing while streaming: `Some(sha256:<hex>)` of what was served, `None` on 404.
pub async fn blob_sha256(reg: &Registry, repo: &str, digest: &str) -> Option<String> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let resp = reg
        .client()
        .get(&path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    if resp.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    let mut h = Sha256::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        h.update(&chunk.unwrap_or_else(|e| panic!("GET {path} body: {e}")));
    }
    Some(h.finish())
}

/// HEADs a blob: `Some(Content-Length)` if present, `None` on 404.
pub async fn blob_size(reg: &Registry, repo: &str, digest: &str) -> Option<u64> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let resp = reg
        .client()
        .send(Method::HEAD, &path, &[], None)
        .await
        .unwrap_or_else(|e| panic!("HEAD {path}: {e:#}"));
    if resp.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert!(resp.status().is_success(), "HEAD {path}: {}", resp.status());
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok());
    Some(len.and_then(|l| l.parse().ok()).unwrap_or(0))
}

/// Tags of `repo` (empty when the repository is unknown).
pub async fn tags(reg: &Registry, repo: &str) -> Vec<String> {
    let path = format!("/v2/{repo}/tags/list");
    let resp = reg
        .client()
        .get(&path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    if resp.status() == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    let v: Value = resp.json().await.expect("tags json");
    let mut t: Vec<String> = v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    t.sort();
    t
}

/// What [`assert_image_complete`] walked.
#[derive(Debug, Default, Clone)]
pub struct Walked {
    /// Manifests (index included) by digest.
    pub manifests: Vec<String>,
    /// Distinct blobs by digest.
    pub blobs: Vec<String>,
}

/// Walks `repo:tag` at the registry (index -> children -> config + layers) and panics unless
/// every manifest exists with the digest, media type and size its parent names (digests
/// recomputed from bytes) and every blob answers HEAD with the right size.
pub async fn assert_image_complete(reg: &Registry, repo: &str, tag: &str) -> Walked {
    let mut walked = Walked::default();
    let (bytes, mt, digest) = get_manifest(reg, repo, tag)
        .await
        .unwrap_or_else(|| panic!("{repo}:{tag} not found at {}", reg.host()));
    let mut seen_blobs = HashSet::new();
    let mut queue = vec![(bytes, mt, digest)];
    while let Some((bytes, mt, digest)) = queue.pop() {
        walked.manifests.push(digest.clone());
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{repo}@{digest}: manifest is not JSON: {e}"));
        if let Some(declared) = v.get("mediaType").and_then(|m| m.as_str()) {
            assert_eq!(declared, mt, "{repo}@{digest}: mediaType vs Content-Type");
        }
        if mt == OCI_INDEX || mt == DOCKER_LIST {
            for child in v["manifests"].as_array().expect("index without manifests") {
                let (cd, cmt, csize) = desc(child);
                let (cb, cct, cdig) = get_manifest(reg, repo, &cd)
                    .await
                    .unwrap_or_else(|| panic!("{repo}:{tag}: child manifest {cd} missing"));
                assert_eq!(cdig, cd, "{repo}: child {cd} bytes hash to {cdig}");
                assert_eq!(cct, cmt, "{repo}: child {cd} media type");
                assert_eq!(cb.len() as u64, csize, "{repo}: child {cd} size");
                queue.push((cb, cct, cdig));
            }
            continue;
        }
        let mut descs = vec![v["config"].clone()];
        descs.extend(v["layers"].as_array().cloned().unwrap_or_default());
        for d in descs {
            let (bd, _, bsize) = desc(&d);
            if !seen_blobs.insert(bd.clone()) {
                continue;
            }
            let got = blob_size(reg, repo, &bd).await;
            assert_eq!(
                got,
                Some(bsize),
                "{repo}:{tag}: blob {bd} (of {digest}) missing or wrong size"
            );
            walked.blobs.push(bd);
        }
    }
    walked
}

fn desc(v: &Value) -> (String, String, u64) {
    let d = v["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("descriptor without digest: {v}"));
    let mt = v["mediaType"].as_str().unwrap_or_default();
    let size = v["size"]
        .as_u64()
        .unwrap_or_else(|| panic!("descriptor without size: {v}"));
    (d.to_string(), mt.to_string(), size)
}

/// Runs `skopeo <args>` (60 s limit).
pub async fn skopeo(args: &[&str]) -> Output {
    super::bin::run_with(
        "/usr/bin/skopeo",
        args,
        &[],
        std::time::Duration::from_secs(60),
    )
    .await
}

/// `skopeo inspect --raw <extra_args> <image_ref>`; panics with stderr on failure.
/// `image_ref` carries the transport: `docker://127.0.0.1:PORT/repo:tag`, `oci:/dir:tag`.
pub async fn skopeo_inspect_raw(image_ref: &str, extra_args: &[&str]) -> Vec<u8> {
    let mut args = vec!["inspect", "--raw"];
    args.extend_from_slice(extra_args);
    args.push(image_ref);
    let out = skopeo(&args).await;
    assert_eq!(out.code, Some(0), "skopeo {args:?} failed: {}", out.stderr);
    out.stdout_raw
}

/// skopeo flags to reach `reg`: `--tls-verify=false` for plain HTTP, `--cert-dir` for TLS
/// (given its CA dir), `--creds` when it has credentials.
pub fn skopeo_flags(reg: &Registry, cert_dir: Option<&std::path::Path>) -> Vec<String> {
    let mut f = Vec::new();
    match (reg.is_tls(), cert_dir) {
        (true, Some(d)) => f.push(format!("--cert-dir={}", d.display())),
        _ => f.push("--tls-verify=false".to_string()),
    }
    if let Some((u, p)) = reg.credentials() {
        f.push(format!("--creds={u}:{p}"));
    }
    f
}
