//! User story: the network or an upstream registry misbehaves, and the mirror neither loses nor
//! corrupts anything.
//!
//! Every test puts the fault proxy ([`Proxy`]) between mirrorsync and a real upstream registry
//! (mirrorsync's upstream is `127.0.0.1:<proxy port>`), injects one kind of fault, and checks the
//! outcome independently at the target: either the sync completes correctly on retry (the image
//! is complete, digests recomputed), or that tag fails with a clear message (exit 1) while the
//! other tags still sync, and nothing corrupt or partial lands at the target. Retries are
//! counted at the proxy; `--nocapture` prints the figures.

use crate::common;

use std::time::{Duration, Instant, SystemTime};

use common::*;

const MIB: usize = 1 << 20;

/// `sync --once` of `images` (`repo:tag` through the proxy) with no extra settings; returns the
/// output and wall time.
async fn sync_timed(world: &World, images: &[&str]) -> (Output, Duration) {
    let config = world.write(&world.config(images));
    let started = Instant::now();
    let out = world.sync(&config).await;
    (out, started.elapsed())
}

/// The summary line of `repo:tag` (the line naming its source), or a panic with the output.
fn line_of<'a>(out: &'a Output, repo_tag: &str) -> &'a str {
    let needle = format!("/{repo_tag} -> ");
    out.stdout
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| {
            panic!(
                "no summary line for {repo_tag}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.stdout, out.stderr
            )
        })
}

/// Asserts `repo:tag` failed with a message containing every one of `words` (case-insensitive).
fn assert_failed_with(out: &Output, repo_tag: &str, words: &[&str]) {
    let line = line_of(out, repo_tag);
    assert!(
        line.starts_with("FAILED "),
        "{repo_tag} should have failed: {line}\n--- stdout ---\n{}",
        out.stdout
    );
    let lower = line.to_ascii_lowercase();
    for w in words {
        assert!(
            lower.contains(&w.to_ascii_lowercase()),
            "{repo_tag}: message should mention {w:?}: {line}"
        );
    }
}

/// Asserts the tag is at the target with the upstream digest and complete.
async fn assert_synced(world: &World, repo: &str, tag: &str) {
    let want = head_manifest(&world.upstream, repo, tag).await;
    assert!(want.is_some(), "{repo}:{tag} missing upstream");
    assert_eq!(
        head_manifest(&world.target, repo, tag).await,
        want,
        "{repo}:{tag} at the target"
    );
    assert_image_complete(&world.target, repo, tag).await;
}

/// An image with one `size`-byte layer (seed) and a small one; returns it and the big layer.
async fn seed_image(
    reg: &Registry,
    repo: &str,
    tag: &str,
    seed: u64,
    size: usize,
) -> (PushedImage, Descriptor) {
    let img = push_image(
        reg,
        repo,
        tag,
        ImageSpec::new(Format::Oci, vec![layer(seed, size), layer(seed + 1, 2_000)]),
    )
    .await;
    let big = img
        .blobs
        .iter()
        .find(|b| b.size == size as u64)
        .expect("big layer")
        .clone();
    (img, big)
}

/// The blob's bytes at the target hash to its digest.
async fn assert_blob_intact(target: &Registry, repo: &str, blob: &Descriptor) {
    assert_eq!(
        blob_sha256(target, repo, &blob.digest).await.as_deref(),
        Some(blob.digest.as_str()),
        "{repo}: blob {} at the target",
        blob.digest
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_dropped_mid_blob_resumes_with_a_range_request() {
    let world = World::start(Proxied::Upstream).await;
    let size = 8 * MIB;
    let (_, big) = seed_image(&world.upstream, "app", "v1", 10, size).await;
    let rule = world.up().add(
        Rule::new(
            &format!("GET /v2/app/blobs/{}", big.digest),
            Action::DropAfter(3 * MIB as u64),
        )
        .first(1),
    );
    let (out, took) = sync_timed(&world, &["app:v1"]).await;
    out.assert_code(0);
    assert_eq!(world.up().applied(rule), 1);
    let gets = world.up().seen().blob_gets_of(&big.digest);
    let sent: u64 = gets.iter().map(|g| g.body_bytes).sum();
    eprintln!(
        "drop mid-blob: {} GETs of the {} MiB layer, {} bytes sent in all ({:.2}x), ranges {:?}, {took:.1?}",
        gets.len(),
        size / MIB,
        sent,
        sent as f64 / size as f64,
        gets.iter()
            .map(|g| g.range().unwrap_or("-").to_string())
            .collect::<Vec<_>>()
    );
    assert!(gets.len() >= 2, "{}", world.up().seen().dump());
    assert!(
        gets[0].range().is_none(),
        "the first GET asks for the whole blob"
    );
    let resumed = gets[1..].iter().find_map(|g| g.range()).unwrap_or_else(|| {
        panic!(
            "no Range request after the drop:\n{}",
            world.up().seen().dump()
        )
    });
    let from: u64 = resumed
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Range {resumed:?}"));
    assert!(
        from > 0 && from <= 3 * MIB as u64,
        "resumed from {from}, the drop was after {} bytes",
        3 * MIB
    );
    assert_eq!(
        gets[1].status, 206,
        "distribution answers a Range GET with 206"
    );
    assert!(
        sent < 2 * size as u64,
        "{sent} bytes crossed for a {size}-byte blob: the download started over"
    );
    assert_synced(&world, "app", "v1").await;
    assert_blob_intact(&world.target, "app", &big).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_bodies_complete_by_resuming() {
    let world = World::start(Proxied::Upstream).await;
    let size = 6 * MIB;
    let (_, big) = seed_image(&world.upstream, "app", "v1", 20, size).await;
    // Twice in a row the body stops short of its Content-Length (FIN, no error).
    let rule = world.up().add(
        Rule::new(
            &format!("GET /v2/app/blobs/{}", big.digest),
            Action::Truncate(MIB as u64),
        )
        .first(2),
    );
    let (out, _) = sync_timed(&world, &["app:v1"]).await;
    out.assert_code(0);
    assert_eq!(world.up().applied(rule), 2);
    let gets = world.up().seen().blob_gets_of(&big.digest);
    let sent: u64 = gets.iter().map(|g| g.body_bytes).sum();
    eprintln!(
        "truncated body x2: {} GETs, ranges {:?}, {:.2}x the blob crossed",
        gets.len(),
        gets.iter()
            .map(|g| g.range().unwrap_or("-").to_string())
            .collect::<Vec<_>>(),
        sent as f64 / size as f64
    );
    assert!(
        gets.iter().skip(1).all(|g| g.range().is_some()),
        "{}",
        gets.dump()
    );
    assert!(sent < 2 * size as u64, "{}", gets.dump());
    assert_synced(&world, "app", "v1").await;
    assert_blob_intact(&world.target, "app", &big).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_error_bursts_are_retried_until_the_sync_completes() {
    let world = World::start(Proxied::Upstream).await;
    seed_image(&world.upstream, "app", "v1", 30, 300_000).await;
    seed_image(&world.upstream, "lib", "v2", 40, 200_000).await;
    let heads = world
        .up()
        .add(Rule::new("HEAD /v2/*/manifests/*", Action::status(503)).first(2));
    let gets = world
        .up()
        .add(Rule::new("GET /v2/*/manifests/*", Action::status(500)).first(2));
    let blobs = world
        .up()
        .add(Rule::new("GET /v2/*/blobs/*", Action::status(503)).first(3));
    let (out, took) = sync_timed(&world, &["app:v1", "lib:v2"]).await;
    out.assert_code(0);
    let (h, g, b) = (
        world.up().applied(heads),
        world.up().applied(gets),
        world.up().applied(blobs),
    );
    eprintln!(
        "500/503 bursts: {h} HEAD + {g} manifest GET + {b} blob GET failures retried, {took:.1?}"
    );
    assert_eq!((h, g, b), (2, 2, 3));
    let seen = world.up().seen();
    // Each failure cost exactly one extra request: 2 HEADs, 2 manifest GETs and 6 blob GETs
    // (two layers and a config per image), plus one retry per injected failure.
    assert_eq!(
        seen.count("HEAD", "manifests", None),
        2 + 2,
        "{}",
        seen.dump()
    );
    assert_eq!(
        seen.count("GET", "manifests", None),
        2 + 2,
        "{}",
        seen.dump()
    );
    assert_eq!(seen.count("GET", "blobs", None), 6 + 3, "{}", seen.dump());
    assert_synced(&world, "app", "v1").await;
    assert_synced(&world, "lib", "v2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_keeps_failing_fails_only_that_tag_after_bounded_attempts() {
    let world = World::start(Proxied::Upstream).await;
    seed_image(&world.upstream, "app", "v1", 50, 100_000).await;
    seed_image(&world.upstream, "broken", "v1", 60, 100_000).await;
    world
        .up()
        .add(Rule::new("GET /v2/broken/manifests/*", Action::status(503)));
    let (out, took) = sync_timed(&world, &["broken:v1", "app:v1"]).await;
    out.assert_code(1);
    assert_failed_with(&out, "broken:v1", &["503"]);
    let seen = world.up().seen();
    let attempts = seen.count("GET", "manifests", Some("broken"));
    eprintln!(
        "persistent 503: {attempts} attempts at the broken manifest, then the tag failed ({took:.1?})"
    );
    assert!(
        (2..=10).contains(&attempts),
        "attempts must be bounded: {attempts}\n{}",
        seen.dump()
    );
    assert_eq!(head_manifest(&world.target, "broken", "v1").await, None);
    assert_synced(&world, "app", "v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_requests_with_retry_after_and_a_non_json_body_is_waited_out() {
    let world = World::start(Proxied::Upstream).await;
    let (_, big) = seed_image(&world.upstream, "app", "v1", 70, 100_000).await;
    world
        .up()
        .add(Rule::new("GET /v2/app/manifests/*", Action::too_many("1")).first(1));
    // Retry-After as an HTTP date four seconds ahead: the blob is asked for about a second
    // later (after the manifest's wait), so 2-3 s remain once truncated to the second.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(4));
    world.up().add(
        Rule::new(
            &format!("GET /v2/app/blobs/{}", big.digest),
            Action::too_many(&date),
        )
        .first(1),
    );
    let (out, took) = sync_timed(&world, &["app:v1"]).await;
    out.assert_code(0);
    let seen = world.up().seen();
    let manifest_gets: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.is("GET", "manifests", Some("app")))
        .collect();
    assert_eq!(manifest_gets.len(), 2, "{}", seen.dump());
    assert_eq!(manifest_gets[0].status, 429);
    let waited = manifest_gets[1].at - manifest_gets[0].at;
    let blob_gets = seen.blob_gets_of(&big.digest);
    assert_eq!(blob_gets.len(), 2, "{}", seen.dump());
    let waited_date = blob_gets[1].at - blob_gets[0].at;
    eprintln!(
        "429: retried the manifest after {waited:.2?} (Retry-After: 1), the blob after {waited_date:.2?} (HTTP date), run {took:.1?}"
    );
    // The proxy logs answers: the wait it sees may be a few ms short of the one kept.
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "retried after {waited:?}");
    assert!(
        waited_date >= Duration::from_secs(1),
        "retried after {waited_date:?}"
    );
    assert!(took >= Duration::from_secs(2));
    assert_synced(&world, "app", "v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn short_stalls_before_and_within_a_response_complete() {
    let world = World::start(Proxied::Upstream).await;
    let (_, big) = seed_image(&world.upstream, "app", "v1", 80, 2 * MIB).await;
    world.up().add(
        Rule::new(
            "GET /v2/app/manifests/*",
            Action::Stall(Duration::from_secs(2)),
        )
        .first(1),
    );
    world.up().add(
        Rule::new(
            &format!("GET /v2/app/blobs/{}", big.digest),
            Action::StallBody {
                after: MIB as u64,
                delay: Duration::from_secs(2),
            },
        )
        .first(1),
    );
    let (out, took) = sync_timed(&world, &["app:v1"]).await;
    out.assert_code(0);
    eprintln!("stalls of 2 s (before the manifest, mid-blob): completed in {took:.1?}");
    assert!(took >= Duration::from_secs(4), "{took:?}");
    let seen = world.up().seen();
    assert_eq!(
        seen.blob_gets_of(&big.digest).len(),
        1,
        "no retry was needed: {}",
        seen.dump()
    );
    assert_synced(&world, "app", "v1").await;
    assert_blob_intact(&world.target, "app", &big).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_bytes_fail_the_tag_and_are_never_pushed() {
    let world = World::start(Proxied::Upstream).await;
    seed_image(&world.upstream, "good", "v1", 90, 500_000).await;
    let (_, big) = seed_image(&world.upstream, "bad", "v1", 100, 3 * MIB).await;
    let rule = world.up().add(Rule::new(
        &format!("GET /v2/bad/blobs/{}", big.digest),
        Action::FlipByte(1_234_567),
    ));
    let (out, _) = sync_timed(&world, &["bad:v1", "good:v1"]).await;
    out.assert_code(1);
    assert_failed_with(&out, "bad:v1", &[&big.digest, "hashes to"]);
    eprintln!(
        "flipped byte: {} GET(s) of the corrupted blob; {}",
        world.up().applied(rule),
        line_of(&out, "bad:v1")
    );
    assert_eq!(
        blob_size(&world.target, "bad", &big.digest).await,
        None,
        "the corrupted blob must not be at the target"
    );
    assert_eq!(head_manifest(&world.target, "bad", "v1").await, None);
    assert_synced(&world, "good", "v1").await;
}

/// Serves `body` as the manifest of `repo:tag` (HEAD and GET by tag or digest), never asking
/// the registry: bytes no real registry would accept.
fn serve_fake_manifest(
    proxy: &Proxy,
    repo: &str,
    tag: &str,
    media_type: &str,
    body: Vec<u8>,
) -> String {
    let digest = sha256_digest(&body);
    let headers = [
        ("Content-Type", media_type),
        ("Docker-Content-Digest", digest.as_str()),
    ];
    for reference in [tag, digest.as_str()] {
        for method in ["HEAD", "GET"] {
            proxy.add(Rule::new(
                &format!("{method} /v2/{repo}/manifests/{reference}"),
                Action::respond(200, &headers, body.clone()),
            ));
        }
    }
    digest
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_from_the_registry_fails_each_tag_clearly_and_nothing_else_breaks() {
    let world = World::start(Proxied::Upstream).await;
    seed_image(&world.upstream, "good", "v1", 110, 100_000).await;
    let (liar, _) = seed_image(&world.upstream, "liar", "v1", 120, 50_000).await;
    let (_, loop_layer) = seed_image(&world.upstream, "loop", "v1", 130, 60_000).await;
    let real = push_image(&world.upstream, "algo", None, oci_image(140, 1000)).await;

    // Not JSON at all.
    serve_fake_manifest(
        world.up(),
        "badjson",
        "v1",
        OCI_MANIFEST,
        b"{\"schemaVersion\": 2, oops".to_vec(),
    );
    // A media type nobody knows.
    let unknown = "application/vnd.example.thing.v1+json";
    serve_fake_manifest(
        world.up(),
        "unknown",
        "v1",
        unknown,
        format!(r#"{{"schemaVersion":2,"mediaType":"{unknown}","things":[]}}"#).into_bytes(),
    );
    // Over 4 MiB (a valid manifest padded with a huge annotation).
    let mut huge = serde_json::from_slice::<serde_json::Value>(&real.manifest_bytes).unwrap();
    huge["annotations"] = serde_json::json!({"padding": "x".repeat(4 * MIB + 1000)});
    serve_fake_manifest(
        world.up(),
        "huge",
        "v1",
        OCI_MANIFEST,
        serde_json::to_vec(&huge).unwrap(),
    );
    // A descriptor with a digest algorithm we do not support.
    let mut md5 = serde_json::from_slice::<serde_json::Value>(&real.manifest_bytes).unwrap();
    md5["layers"][0]["digest"] = serde_json::json!("md5:0123456789abcdef0123456789abcdef");
    serve_fake_manifest(
        world.up(),
        "algo",
        "v1",
        OCI_MANIFEST,
        serde_json::to_vec(&md5).unwrap(),
    );
    // A Docker-Content-Digest that lies about the manifest's bytes.
    let lie = format!("sha256:{}", "0".repeat(64));
    world.up().add(Rule::new(
        "GET /v2/liar/manifests/*",
        Action::set_header("Docker-Content-Digest", &lie),
    ));
    // Every blob GET of `loop` redirects to one URL that redirects to itself.
    let looped = format!("{}/v2/loop/blobs/{}", world.up().url(), loop_layer.digest);
    let redirects = world.up().add(Rule::new(
        "GET /v2/loop/blobs/*",
        Action::redirect(302, &looped),
    ));

    let images = [
        "badjson:v1",
        "unknown:v1",
        "huge:v1",
        "algo:v1",
        "liar:v1",
        "loop:v1",
        "good:v1",
    ];
    let (out, took) = sync_timed(&world, &images).await;
    out.assert_code(1);
    for tag in &images[..6] {
        eprintln!("{}", line_of(&out, tag));
    }
    eprintln!(
        "bad input: {} redirects served to the loop; run {took:.1?}",
        world.up().applied(redirects)
    );
    assert_failed_with(&out, "badjson:v1", &["not valid JSON"]);
    assert_failed_with(
        &out,
        "unknown:v1",
        &["unsupported manifest media type", unknown],
    );
    assert_failed_with(&out, "huge:v1", &["larger than 4194304 bytes"]);
    assert_failed_with(&out, "algo:v1", &["unsupported digest algorithm", "md5"]);
    assert_failed_with(
        &out,
        "liar:v1",
        &["Docker-Content-Digest", &lie, &liar.digest],
    );
    assert_failed_with(&out, "loop:v1", &["redirect"]);
    for repo in ["badjson", "unknown", "huge", "algo", "liar", "loop"] {
        assert_eq!(
            head_manifest(&world.target, repo, "v1").await,
            None,
            "{repo}:v1 at the target"
        );
    }
    assert_synced(&world, "good", "v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_loop_is_bad_input_not_a_transient_failure() {
    // RegistryError::Protocol documents "redirect loop" as bad input (not retryable), and the
    // issue lists only connect errors, resets, timeouts, 5xx and short bodies as transient.
    // One GET follows at most 10 redirects (11 requests); retrying repeats the whole loop. The
    // image's three blobs are fetched at once, so up to 3 x 11 requests without a retry.
    let world = World::start(Proxied::Upstream).await;
    let (img, _) = seed_image(&world.upstream, "loop", "v1", 135, 1_000).await;
    let config = img.blobs[0].digest.clone();
    let looped = format!("{}/v2/loop/blobs/{config}", world.up().url());
    let redirects = world.up().add(Rule::new(
        "GET /v2/loop/blobs/*",
        Action::redirect(302, &looped),
    ));
    let (out, took) = sync_timed(&world, &["loop:v1"]).await;
    out.assert_code(1);
    assert_failed_with(&out, "loop:v1", &["redirect"]);
    let served = world.up().applied(redirects);
    eprintln!("redirect loop: {served} redirects served before the tag failed ({took:.1?})");
    assert!(
        served <= 3 * 11,
        "a redirect loop was retried like a transient failure: {served} redirects served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_list_whose_link_leads_back_to_an_earlier_page_fails_alone() {
    // A tag filter makes mirrorsync read the upstream's tag list; page 2's `Link: rel="next"`
    // leads back to page 1. The read must stop (each page asked once), the image fail with a
    // message that says so, no panic, and the other image still sync.
    let world = World::start(Proxied::Upstream).await;
    seed_image(&world.upstream, "good", "v1", 200, 1_000).await;
    let list = "/v2/lib/loop/tags/list";
    let page2 = format!("{list}?last=b&n=2");
    let names = |t: &[&str]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    world.up().add(Rule::new(
        &format!("GET {page2}"),
        tags_page("lib/loop", &names(&["c"]), Some(list)),
    ));
    world.up().add(Rule::new(
        &format!("GET {list}"),
        tags_page("lib/loop", &names(&["a", "b"]), Some(&page2)),
    ));
    let config = world.write(&world.config_items(&[
        format!(
            "{{ source: \"{}\", tags: [{{ all: true }}] }}",
            world.image("lib/loop")
        ),
        world.image("good:v1"),
    ]));
    let out = world.sync(&config).await;
    out.assert_code(1);
    assert!(
        out.stdout.contains("pagination loops"),
        "the failure should name the loop:\n{}",
        out.stdout
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let pages: Vec<String> = world
        .up()
        .seen()
        .iter()
        .filter(|s| s.path == list)
        .map(|s| s.query.clone())
        .collect();
    assert_eq!(
        pages,
        ["", "last=b&n=2"],
        "each page read once, then the read stops"
    );
    assert_synced(&world, "good", "v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_another_host_does_not_carry_the_authorization_header() {
    let (user, pass) = ("puller", "upstream-Secret-42");
    let upstream = Registry::start_with(RegistryOptions {
        htpasswd: Some((user.into(), pass.into())),
        ..Default::default()
    })
    .await;
    let world = World::with(upstream, Registry::start().await, Proxied::Upstream).await;
    let (_, big) = seed_image(&world.upstream, "app", "v1", 150, 400_000).await;
    // The other host: serves the right bytes and records what it was sent.
    let storage = Proxy::standalone().await;
    storage.add(Rule::new(
        "GET /storage/*",
        Action::respond(
            200,
            &[("Content-Type", "application/octet-stream")],
            layer(150, 400_000),
        ),
    ));
    let redirect = world.up().add(Rule::new(
        &format!("GET /v2/app/blobs/{}", big.digest),
        Action::redirect(
            307,
            &format!("http://localhost:{}/storage/blob?sig=abc", storage.port()),
        ),
    ));
    let config = world.write(&world.config(&["app:v1"]).upstream_lines(&format!(
        "    auth: {{ username: {user}, password_env: UPSTREAM_PASSWORD }}\n"
    )));
    let out = mirrorsync_with_env(
        &["sync", "--once", "--config", &config.display().to_string()],
        &[("UPSTREAM_PASSWORD", pass)],
    )
    .await;
    out.assert_code(0);
    assert_eq!(world.up().applied(redirect), 1);
    let asked = world.up().seen().blob_gets_of(&big.digest);
    assert!(
        asked.iter().all(|s| s.has_authorization()),
        "the registry itself was asked with credentials: {}",
        asked.dump()
    );
    let at_storage = storage.seen();
    eprintln!(
        "cross-host redirect: the other host saw:\n{}",
        at_storage.dump()
    );
    assert_eq!(at_storage.len(), 1, "{}", at_storage.dump());
    assert!(
        !at_storage[0].has_authorization(),
        "Authorization followed the redirect to another host: {:?}",
        at_storage[0].headers
    );
    assert_synced(&world, "app", "v1").await;
    assert_blob_intact(&world.target, "app", &big).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_logs_errors_or_metrics() {
    let (up_user, up_pass) = ("hub-robot", "Upstream-Pa55word-9f3e");
    let (t_user, t_pass) = ("mirror-robot", "Target-Pa55word-c71a");
    let upstream = Registry::start_with(RegistryOptions {
        htpasswd: Some((up_user.into(), up_pass.into())),
        ..Default::default()
    })
    .await;
    let target = Registry::start_with(RegistryOptions {
        htpasswd: Some((t_user.into(), t_pass.into())),
        ..Default::default()
    })
    .await;
    let world = World::with(upstream, target, Proxied::Upstream).await;
    let (_, big) = seed_image(&world.upstream, "app", "v1", 160, 2 * MIB).await;
    let (_, flipped) = seed_image(&world.upstream, "bad", "v1", 170, 300_000).await;
    seed_image(&world.upstream, "liar", "v1", 180, 10_000).await;
    seed_image(&world.upstream, "slow", "v1", 190, 10_000).await;
    let p = world.up();
    p.add(Rule::new("HEAD /v2/*/manifests/*", Action::status(503)).first(2));
    p.add(
        Rule::new(
            &format!("GET /v2/app/blobs/{}", big.digest),
            Action::DropAfter(MIB as u64),
        )
        .first(1),
    );
    p.add(Rule::new("GET /v2/slow/manifests/*", Action::too_many("1")).first(1));
    p.add(Rule::new(
        &format!("GET /v2/bad/blobs/{}", flipped.digest),
        Action::FlipByte(10),
    ));
    p.add(Rule::new(
        "GET /v2/liar/manifests/*",
        Action::set_header(
            "Docker-Content-Digest",
            &format!("sha256:{}", "1".repeat(64)),
        ),
    ));
    let config = world.write(
        &world
            .config(&["app:v1", "bad:v1", "liar:v1", "slow:v1"])
            .target_lines(&format!(
                "  auth: {{ username: {t_user}, password_env: TARGET_PASS }}\n"
            ))
            .upstream_lines(&format!(
                "    auth: {{ username: {up_user}, password_env: UP_PASS }}\n"
            )),
    );
    let metrics = world.dir.path().join("mirrorsync.prom");
    let out = mirrorsync_with_env(
        &[
            "--log-level",
            "debug",
            "sync",
            "--once",
            "--config",
            &config.display().to_string(),
            "--metrics-file",
            &metrics.display().to_string(),
        ],
        &[("UP_PASS", up_pass), ("TARGET_PASS", t_pass)],
    )
    .await;
    out.assert_code(1);
    assert_failed_with(&out, "bad:v1", &["hashes to"]);
    assert_failed_with(&out, "liar:v1", &["Docker-Content-Digest"]);
    assert!(
        world.up().seen().iter().any(|s| s.has_authorization()),
        "credentials were used"
    );
    let metrics_text = std::fs::read_to_string(&metrics).expect("metrics file");
    use base64::Engine as _;
    let b64 =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let secrets = [
        up_pass.to_string(),
        t_pass.to_string(),
        b64(up_user, up_pass),
        b64(t_user, t_pass),
    ];
    let stderr_lines = out.stderr.lines().count();
    for (name, text) in [
        ("stdout", &out.stdout),
        ("stderr", &out.stderr),
        ("metrics", &metrics_text),
    ] {
        for (i, line) in text.lines().enumerate() {
            for s in &secrets {
                assert!(
                    !line.contains(s.as_str()),
                    "{name} line {} contains a secret: {line}",
                    i + 1
                );
            }
        }
    }
    eprintln!(
        "secrets: {stderr_lines} debug log lines, {} stdout lines, metrics checked: no password or Basic token",
        out.stdout.lines().count()
    );
    assert_synced(&world, "app", "v1").await;
    assert_synced(&world, "slow", "v1").await;
}
