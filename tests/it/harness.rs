//! Smoke test of the integration-test harness itself (real registries, seeding, checks).

use crate::common;

use common::*;
use reqwest::{Method, StatusCode};

fn parse_json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_registry_images_indexes_and_access_log() {
    let reg = Registry::start().await;

    let oci = push_image(
        &reg,
        "lib/oci",
        "v1",
        ImageSpec::new(Format::Oci, vec![layer(1, 1000), layer(2, 5000)]),
    )
    .await;
    let docker = push_image(&reg, "lib/docker", "v1", docker_image(3, 2000)).await;

    // OCI index: two platforms + an attestation for the amd64 child.
    let multi = push_multi_arch(
        &reg,
        "lib/multi",
        "v1",
        Format::Oci,
        (
            oci_image(10, 3000),
            oci_image(11, 3000).platform("linux/arm64/v8"),
        ),
        &[0],
    )
    .await;
    let (amd, index) = (multi.first, multi.index);

    // Docker manifest list (children pushed by digest first, by push_index).
    let list = push_multi_arch(
        &reg,
        "lib/list",
        "v1",
        Format::Docker,
        (
            docker_image(20, 100),
            docker_image(21, 100).platform("linux/arm/v7"),
        ),
        &[],
    )
    .await
    .index;

    // get_manifest: exact bytes, media type, digest.
    for (repo, img) in [
        ("lib/oci", &oci),
        ("lib/docker", &docker),
        ("lib/multi", &index),
    ] {
        let (bytes, mt, digest) = get_manifest(&reg, repo, "v1").await.expect("manifest");
        assert_eq!(bytes, img.manifest_bytes);
        assert_eq!(mt, img.media_type);
        assert_eq!(digest, img.digest);
        let walked = assert_image_complete(&reg, repo, "v1").await;
        assert!(!walked.blobs.is_empty());
    }
    assert_eq!(oci.media_type, OCI_MANIFEST);
    assert_eq!(docker.media_type, DOCKER_MANIFEST);
    assert_eq!(index.media_type, OCI_INDEX);
    let v = parse_json(&index.manifest_bytes);
    let m = v["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m[1]["platform"]["variant"], "v8");
    assert_eq!(m[2]["platform"]["os"], "unknown");
    assert_eq!(
        m[2]["annotations"]["vnd.docker.reference.digest"],
        amd.digest.as_str()
    );
    assert_eq!(
        m[2]["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        assert_image_complete(&reg, "lib/multi", "v1")
            .await
            .manifests
            .len(),
        4
    );
    assert!(get_manifest(&reg, "lib/multi", "nope").await.is_none());
    assert_eq!(tags(&reg, "lib/multi").await, vec!["v1".to_string()]);
    assert!(tags(&reg, "nothing/here").await.is_empty());

    let (lb, lmt, ld) = get_manifest(&reg, "lib/list", "v1").await.unwrap();
    assert_eq!(
        (lmt.as_str(), ld.as_str()),
        (DOCKER_LIST, list.digest.as_str())
    );
    assert_eq!(
        assert_image_complete(&reg, "lib/list", "v1")
            .await
            .blobs
            .len(),
        4
    );
    assert_eq!(parse_json(&lb)["manifests"][1]["platform"]["variant"], "v7");

    // Blob content, recomputed while streaming.
    for b in &oci.blobs {
        assert_eq!(
            blob_sha256(&reg, "lib/oci", &b.digest).await.as_deref(),
            Some(b.digest.as_str())
        );
    }
    assert!(
        blob_sha256(&reg, "lib/oci", &sha256_digest(b"absent"))
            .await
            .is_none()
    );

    // skopeo sees the same bytes.
    let raw = skopeo_inspect_raw(
        &format!("docker://{}", reg.image_ref("lib/multi", "v1")),
        &["--tls-verify=false"],
    )
    .await;
    assert_eq!(raw, index.manifest_bytes);
    let raw = skopeo_inspect_raw(
        &format!("docker://{}", reg.image_ref("lib/docker", "v1")),
        &["--tls-verify=false"],
    )
    .await;
    assert_eq!(raw, docker.manifest_bytes);

    // Access log: exactly the requests made after the mark.
    let mark = reg.log_mark().await;
    get_manifest(&reg, "lib/oci", "v1").await.unwrap();
    head_manifest(&reg, "lib/oci", "v1").await.unwrap();
    head_manifest(&reg, "lib/oci", "v1").await.unwrap();
    blob_sha256(&reg, "lib/oci", &oci.blobs[1].digest)
        .await
        .unwrap();
    let log = reg.access_log_since(mark).await;
    assert_eq!(log.manifest_gets(Some("lib/oci")), 1, "{}", log.dump());
    assert_eq!(log.manifest_heads(Some("lib/oci")), 2, "{}", log.dump());
    assert_eq!(log.blob_gets(None), 1, "{}", log.dump());
    assert_eq!(log.writes(None), 0);
    assert_eq!(log.len(), 4, "{}", log.dump());
    assert!(log.iter().all(|a| a.is_harness() && a.status == 200));
    assert!(log.not_harness().is_empty());

    // Writes per repository over the whole run.
    let all = reg.access_log().await;
    let w = all.writes_by_repo();
    // oci: 2 layers + config (POST + PUT each) + manifest by digest + by tag.
    assert_eq!(w.get("lib/oci"), Some(&8), "{}", all.dump());
    assert!(
        all.iter().any(|a| a.method == "PUT"
            && a.kind() == Some("uploads")
            && a.query.contains("digest="))
    );
    // skopeo's requests are in the log too, with its own user agent.
    assert!(!all.not_harness().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn big_blob_is_streamed_in_chunks() {
    let reg = Registry::start().await;
    let size = 64u64 << 20;
    let d = push_big_blob(&reg, "big/blob", size, 42).await;
    assert_eq!(d.size, size);
    assert_eq!(blob_size(&reg, "big/blob", &d.digest).await, Some(size));
    assert_eq!(
        blob_sha256(&reg, "big/blob", &d.digest).await.as_deref(),
        Some(d.digest.as_str())
    );
    // The same bytes as layer(seed, size).
    assert_eq!(sha256_digest(&layer(42, size as usize)), d.digest);
    let log = reg.access_log().await;
    let patches = log.iter().filter(|a| a.method == "PATCH").count();
    assert_eq!(patches, 8, "{}", log.dump());

    // An image with a generated layer.
    let spec = ImageSpec::new(Format::Oci, vec![]).big_layer(3 << 20, 7);
    let img = push_image(&reg, "big/img", "v1", spec).await;
    assert_eq!(img.blobs[1].size, 3 << 20);
    assert_image_complete(&reg, "big/img", "v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_htpasswd() {
    let ca = TestCa::new();
    let reg = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        htpasswd: Some(("robot".into(), "s3cret".into())),
        token: None,
    })
    .await;
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    assert!(ca.ca_pem_path().exists());

    let img = push_image(&reg, "sec/img", "v1", oci_image(5, 500)).await;
    assert_image_complete(&reg, "sec/img", "v1").await;

    // Anonymous: 401 with a Basic challenge.
    let anon = reg.anonymous_client();
    let r = anon.get("/v2/sec/img/manifests/v1").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ch = Challenge::parse(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(ch.scheme, "basic");
    // Wrong password: still 401.
    let wrong = reg.client().with_credentials("robot", "nope");
    assert_eq!(
        wrong.get("/v2/").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // skopeo over TLS with the CA dir and credentials.
    let raw = skopeo_inspect_raw(
        &format!("docker://{}", reg.image_ref("sec/img", "v1")),
        &[
            &format!("--cert-dir={}", ca.cert_dir().display()),
            "--creds=robot:s3cret",
        ],
    )
    .await;
    assert_eq!(raw, img.manifest_bytes);
    // Without the CA, skopeo refuses the certificate.
    let out = skopeo(&[
        "inspect",
        "--raw",
        "--creds=robot:s3cret",
        &format!("docker://{}", reg.image_ref("sec/img", "v1")),
    ])
    .await;
    assert_ne!(out.code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_push_pull_and_denials() {
    let ts = TokenServer::start(vec![("alice".into(), "pw".into())], true);
    let reg = Registry::start_with(RegistryOptions {
        token: Some(&ts),
        ..Default::default()
    })
    .await;

    // Authenticated push through 401 -> token -> retry.
    let img = push_image(&reg, "tok/img", "v1", docker_image(8, 800)).await;
    assert_image_complete(&reg, "tok/img", "v1").await;
    let reqs = ts.requests();
    assert!(!reqs.is_empty());
    assert!(
        reqs.iter()
            .all(|r| r.had_basic && r.basic_user.as_deref() == Some("alice") && r.status == 200)
    );
    assert!(
        reqs.iter()
            .any(|r| r.scopes == ["repository:tok/img:pull,push"]),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .all(|r| r.service.as_deref() == Some(ts.service()))
    );

    // Anonymous push: token without push, registry says 401.
    let anon = reg.anonymous_client();
    let r = anon
        .send(Method::POST, "/v2/tok/img/blobs/uploads/", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let last = ts.requests().last().cloned().unwrap();
    assert!(!last.had_basic);
    assert!(
        last.granted.iter().all(|(_, a)| a == &["pull".to_string()]),
        "{last:?}"
    );

    // Anonymous pull works (allowed).
    let r = anon
        .send(
            Method::GET,
            "/v2/tok/img/manifests/v1",
            &[("Accept", MANIFEST_ACCEPT)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().to_vec(), img.manifest_bytes);

    // Bad password: the token server refuses.
    let bad = reg.client().with_credentials("alice", "wrong");
    assert!(bad.get("/v2/tok/img/manifests/v1").await.is_err());
    assert_eq!(ts.requests().last().unwrap().status, 401);

    // skopeo performs the token dance itself against our token server.
    ts.clear_requests();
    let raw = skopeo_inspect_raw(
        &format!("docker://{}", reg.image_ref("tok/img", "v1")),
        &["--tls-verify=false", "--creds=alice:pw"],
    )
    .await;
    assert_eq!(raw, img.manifest_bytes);
    assert!(
        ts.requests()
            .iter()
            .any(|r| !r.user_agent.contains("harness") && r.had_basic)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_without_anonymous_pull() {
    let ts = TokenServer::start(vec![("bob".into(), "pw".into())], false);
    let reg = Registry::start_with(RegistryOptions {
        token: Some(&ts),
        ..Default::default()
    })
    .await;
    push_image(&reg, "priv/img", "v1", oci_image(9, 90)).await;
    let r = reg
        .anonymous_client()
        .get("/v2/priv/img/manifests/v1")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ch = Challenge::parse(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(ch.scheme, "bearer");
    assert_eq!(ch.params["scope"], "repository:priv/img:pull");
    assert_eq!(ch.params["realm"], ts.realm());
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_process_is_reaped_on_drop() {
    let reg = Registry::start().await;
    let pid = reg.pid().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(reg);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_measured_reads_peak_rss() {
    let args = vec![
        "-c".to_string(),
        "x = bytearray(200 * 1024 * 1024); print('ok')".to_string(),
    ];
    let (out, kib) = measure_program("/usr/bin/python3".into(), &args, &[]).await;
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "ok");
    assert!(kib > 200 * 1024, "peak rss {kib} KiB");
    assert!(kib < 400 * 1024, "peak rss {kib} KiB");
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), "images: []\n");
    assert_eq!(std::fs::read_to_string(p).unwrap(), "images: []\n");
    assert!(bin_path().ends_with("mirrorsync"));
}

#[test]
fn parsers() {
    let l = r#"127.0.0.1 - - [24/Nov/2026:19:26:29 +0000] "HEAD /v2/a/b/manifests/latest?x=1 HTTP/1.1" 404 96 "" "curl/7.88.1""#;
    let a = Access::parse(l).unwrap();
    assert_eq!(
        (
            a.method.as_str(),
            a.path.as_str(),
            a.query.as_str(),
            a.status
        ),
        ("HEAD", "/v2/a/b/manifests/latest", "x=1", 404)
    );
    assert_eq!(a.user_agent, "curl/7.88.1");
    assert_eq!(a.repo().as_deref(), Some("a/b"));
    assert_eq!(a.reference().as_deref(), Some("latest"));
    assert!(Access::parse("time=\"x\" level=info msg=\"response completed\"").is_none());

    let ch = Challenge::parse(
        r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a:pull,push repository:b:pull",error="insufficient_scope""#,
    );
    assert_eq!(ch.scheme, "bearer");
    assert_eq!(
        ch.params["scope"],
        "repository:a:pull,push repository:b:pull"
    );
    assert_eq!(ch.params["error"], "insufficient_scope");

    assert_eq!(
        common::util::percent_decode("repository%3Aa%2Fb%3Apull%2Cpush+x"),
        "repository:a/b:pull,push x"
    );
    assert_eq!(common::util::rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    let mut g = common::util::DataGen::new(7);
    let mut parts = vec![0u8; 1000];
    let (x, y) = parts.split_at_mut(13);
    g.fill(x);
    g.fill(y);
    assert_eq!(parts, layer(7, 1000));
}

/// The golden access log (real docker-registry 2.8 lines) parses as its expected file says; the
/// benchmark's parser is tested against the same pair (`bench/mirrorbench/test_registry.py`).
#[test]
fn both_access_log_parsers_read_the_golden_fixture() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let log = std::fs::read_to_string(fixtures.join("registry-2.8-access.log")).expect("log");
    let expected: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("registry-2.8-access.json")).expect("json"),
    )
    .expect("expected parse");
    let got: Vec<serde_json::Value> = log
        .lines()
        .map(|line| match Access::parse(line) {
            None => serde_json::Value::Null,
            Some(a) => serde_json::json!({
                "method": a.method,
                "path": a.path,
                "query": a.query,
                "status": a.status,
                "user_agent": a.user_agent,
                "repo": a.repo(),
                "kind": a.kind(),
                "ref": a.reference(),
            }),
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "one expected entry per line");
    for ((line, got), want) in log.lines().zip(&got).zip(&expected) {
        assert_eq!(got, want, "{line}");
    }
}

/// A token for `repository:p/img:pull` from `ts` (user u/pw).
async fn token(ts: &TokenServer, c: &Client) -> String {
    let url = format!(
        "{}?service={}&scope=repository:p/img:pull",
        ts.realm(),
        ts.service()
    );
    let v: serde_json::Value = c
        .http()
        .get(url)
        .basic_auth("u", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_really_verifies_tokens() {
    let ts = TokenServer::start(vec![("u".into(), "pw".into())], false);
    let other = TokenServer::start(vec![("u".into(), "pw".into())], false);
    let reg = Registry::start_with(RegistryOptions {
        token: Some(&ts),
        ..Default::default()
    })
    .await;
    push_image(&reg, "p/img", "v1", oci_image(1, 10)).await;
    let http = reg.client().http().clone();
    let url = format!("{}/v2/p/img/manifests/v1", reg.url());
    let get = |t: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.get(url)
                .header("Accept", MANIFEST_ACCEPT)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let good = token(&ts, reg.client()).await;
    assert_eq!(get(good.clone()).await, 200);
    let mut bad = good.clone().into_bytes();
    let n = bad.len() - 5;
    bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
    assert_eq!(get(String::from_utf8(bad).unwrap()).await, 401);
    assert_eq!(get(token(&other, reg.client()).await).await, 401);
    // distribution logs why (at info level): bad signature, and an x5c chain not rooted in
    // its rootcertbundle.
    let log = reg.registry_log();
    assert!(log.contains("invalid signature"), "{log}");
    assert!(log.contains("unable to verify certificate chain"), "{log}");
}
