//! A hostile upstream (or target) cannot steal credentials, write outside the configured
//! repositories, or exhaust memory.
//!
//! Each story puts a real `docker-registry` behind the fault proxy, or a small hostile server
//! (`tests/common/hostile.rs`), and checks at the receiving side: what a server that should get
//! no credential was sent (recorded there), what the target holds afterwards (read back with
//! the harness's own client), and mirrorsync's peak RSS (`wait4`) against the Helm chart's
//! 512 MiB memory limit.

use crate::common;

use common::hostile::Hostile;
use common::*;

/// The Helm chart's memory limit.
const CHART_MEMORY_KIB: u64 = 512 * 1024;
const UPSTREAM_USER: &str = "puller";
const UPSTREAM_PASSWORD: &str = "Upstream-Pa55-4e1b7c";
const TARGET_USER: &str = "robot";
const TARGET_PASSWORD: &str = "Target-Pa55-93d0aa";

async fn small_image(reg: &Registry, repo: &str, tag: &str, seed: u64) -> PushedImage {
    push_image(
        reg,
        repo,
        tag,
        oci_image(seed, 3_000).label("seed", &seed.to_string()),
    )
    .await
}

fn config(dir: &std::path::Path, yaml: &str) -> String {
    write_config(dir, yaml).display().to_string()
}

/// The `FAILED` line of a tag filter's selection of `repo`.
fn selection_failed<'a>(out: &'a Output, repo: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with("FAILED ") && l.contains(&format!("/{repo} (tag filters) -> ")))
        .unwrap_or_else(|| {
            panic!(
                "{repo}: no failed selection\n{}\n{}",
                out.stdout, out.stderr
            )
        })
}

fn assert_no_secret(out: &Output, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "a secret was printed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

/// The upstream redirects blob downloads to a "CDN" that answers 401 with a Bearer challenge
/// naming a realm of its own: the upstream's credentials must not go to that realm (nor to the
/// CDN), and the tag fails saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_target_that_challenges_gets_no_credentials() {
    let upstream = Registry::start_with(RegistryOptions {
        htpasswd: Some((UPSTREAM_USER.into(), UPSTREAM_PASSWORD.into())),
        ..Default::default()
    })
    .await;
    let target = Registry::start().await;
    small_image(&upstream, "team/app", "1.0", 3).await;
    let up = Proxy::start(&upstream).await;
    let cdn = Proxy::standalone().await;
    cdn.add(Rule::new(
        "* /steal*",
        Action::respond(
            200,
            &[("Content-Type", "application/json")],
            r#"{"token":"stolen-token"}"#,
        ),
    ));
    let challenge = format!(
        "Bearer realm=\"http://{}/steal\",service=\"cdn\",scope=\"repository:team/app:pull\"",
        cdn.host()
    );
    cdn.add(Rule::new(
        "* *",
        Action::respond(401, &[("WWW-Authenticate", challenge.as_str())], ""),
    ));
    up.add(Rule::new(
        "GET /v2/team/app/blobs/*",
        Action::redirect(307, &format!("http://{}/blobs/object", cdn.host())),
    ));

    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &ConfigYaml::to_registry(&target.host())
            .upstream(&up.host())
            .upstream_lines(&format!(
                "    auth: {{ username: {UPSTREAM_USER}, password_env: UP_PASSWORD }}\n"
            ))
            .images(&[format!("{}/team/app:1.0", up.host())])
            .yaml(),
    );
    let out = mirrorsync_with_env(
        &["sync", "--once", "--config", &config],
        &[("UP_PASSWORD", UPSTREAM_PASSWORD)],
    )
    .await;
    out.assert_code(1);
    assert_no_secret(&out, &[UPSTREAM_PASSWORD]);
    let line = failed_line(&out, "team/app:1.0");
    assert!(
        line.contains("401") && line.contains("not followed"),
        "the failure says the CDN's challenge was not followed: {line}"
    );

    let seen = cdn.seen();
    assert!(
        seen.iter().any(|s| s.path == "/blobs/object"),
        "the redirect was followed to the CDN:\n{}",
        seen.dump()
    );
    assert!(
        seen.iter().all(|s| !s.has_authorization()),
        "the CDN received a credential:\n{}",
        seen.dump()
    );
    assert!(
        !seen.iter().any(|s| s.path.starts_with("/steal")),
        "the CDN's realm was asked for a token:\n{}",
        seen.dump()
    );
    assert!(
        up.seen()
            .iter()
            .all(|s| s.header("authorization") != Some("Bearer stolen-token")),
        "a token from the CDN's realm was used at the registry"
    );
    assert_eq!(head_manifest(&target, "team/app", "1.0").await, None);
}

/// The target answers the upload `POST` with a `Location` on another host: the target's
/// password does not follow it (that host, which wants credentials, answers 401), and the tag
/// fails saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_location_on_another_host_gets_no_credentials() {
    let upstream = Registry::start().await;
    let target = Registry::start_with(RegistryOptions {
        htpasswd: Some((TARGET_USER.into(), TARGET_PASSWORD.into())),
        ..Default::default()
    })
    .await;
    small_image(&upstream, "team/app", "1.0", 5).await;
    let down = Proxy::start(&target).await;
    // The other host is the same registry through another address: with the password, the
    // upload would succeed there.
    let other = Proxy::start(&target).await;
    Quirk::LocationOtherHost(other.host()).install(&down);

    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &ConfigYaml::to_registry(&down.host())
            .target_lines(&format!(
                "  auth: {{ username: {TARGET_USER}, password_env: TARGET_PASSWORD }}\n"
            ))
            .upstream(&upstream.host())
            .images(&[upstream.image_ref("team/app", "1.0")])
            .yaml(),
    );
    let out = mirrorsync_with_env(
        &["sync", "--once", "--config", &config],
        &[("TARGET_PASSWORD", TARGET_PASSWORD)],
    )
    .await;
    out.assert_code(1);
    assert_no_secret(&out, &[TARGET_PASSWORD]);
    let line = failed_line(&out, "team/app:1.0");
    assert!(
        line.contains(&other.host()) && line.contains("401"),
        "the failure names the other host and its 401: {line}"
    );
    let seen = other.seen();
    assert!(
        seen.iter().any(|s| s.path.contains("/blobs/uploads/")),
        "the Location was followed:\n{}",
        seen.dump()
    );
    assert!(
        seen.iter().all(|s| !s.has_authorization()),
        "the other host received the target's credentials:\n{}",
        seen.dump()
    );
    assert!(
        down.seen().iter().any(|s| s.has_authorization()),
        "the target itself did get them"
    );
}

/// A registry reached over TLS whose token realm is plain HTTP: its credentials are not sent
/// there in clear text.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_go_to_a_plain_http_realm_of_a_tls_registry() {
    let ca = TestCa::new();
    let tokens = TokenServer::start(
        vec![(UPSTREAM_USER.into(), UPSTREAM_PASSWORD.into())],
        false,
    );
    let upstream = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        token: Some(&tokens),
        ..Default::default()
    })
    .await;
    assert!(tokens.realm().starts_with("http://"));
    let target = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            "target:\n  registry: \"{t}\"\n  insecure: true\n\
             registries:\n  \"{u}\":\n    ca_file: {ca}\n    auth: {{ username: {UPSTREAM_USER}, password_env: UP_PASSWORD }}\n\
             images:\n  - {u}/team/app:1.0\n",
            t = target.host(),
            u = upstream.host(),
            ca = ca.ca_pem_path().display(),
        ),
    );
    tokens.clear_requests();
    let out = mirrorsync_with_env(
        &["sync", "--once", "--config", &config],
        &[("UP_PASSWORD", UPSTREAM_PASSWORD)],
    )
    .await;
    out.assert_code(1);
    assert_no_secret(&out, &[UPSTREAM_PASSWORD]);
    let line = failed_line(&out, "team/app:1.0");
    assert!(line.contains("plain HTTP"), "{line}");
    let requests = tokens.requests();
    assert!(
        requests.iter().all(|r| !r.had_basic),
        "the token server got the password in clear text: {requests:?}"
    );
}

/// A tag list with a path-traversal tag and terminal escapes: nothing lands outside the
/// configured repository (the target's `library/nginx:latest` is untouched), only the valid tag
/// is mirrored, the bad ones are named escaped in a warning, and stdout carries no control
/// character.
#[tokio::test(flavor = "multi_thread")]
async fn listed_tags_cannot_escape_the_repository_or_forge_output() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let wanted = small_image(&upstream, "vendor/tool", "1.0", 11).await;
    // What the traversal would put over the target's nginx: an old image upstream.
    let old = small_image(&upstream, "library/nginx", "latest", 12).await;
    let current = small_image(&target, "library/nginx", "latest", 13).await;
    assert_ne!(old.digest, current.digest);
    let up = Proxy::start(&upstream).await;
    let listed = serde_json::json!({
        "name": "vendor/tool",
        "tags": [
            "1.0",
            "1.0/../../../../library/nginx/manifests/latest",
            "..",
            "\u{1b}[2J\u{1b}[31mred",
            "x\nFAILED forged -> line: injected",
            "tab\there",
        ],
    });
    up.add(Rule::new(
        "GET /v2/vendor/tool/tags/list*",
        Action::respond(
            200,
            &[("Content-Type", "application/json")],
            listed.to_string(),
        ),
    ));
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    for target_yaml in [
        format!("registry: \"{}\"\n  insecure: true", target.host()),
        format!("path: \"{}\"", layout.display()),
    ] {
        let config = config(
            dir.path(),
            &format!(
                "target:\n  {target_yaml}\n\
                 registries:\n  \"{u}\": {{ insecure: true }}\n\
                 images:\n  - {{ source: \"{u}/vendor/tool\", tags: [{{ regex: '.*' }}] }}\n",
                u = up.host(),
            ),
        );
        let out = mirrorsync(&["sync", "--once", "--config", &config]).await;
        out.assert_code(0);
        assert!(
            !out.stdout_raw
                .iter()
                .any(|b| b.is_ascii_control() && *b != b'\n'),
            "stdout carries a control character:\n{:?}",
            out.stdout
        );
        assert!(
            !out.stdout.lines().any(|l| l.starts_with("FAILED forged")),
            "a forged summary line:\n{}",
            out.stdout
        );
        assert!(
            !out.stderr.contains('\u{1b}'),
            "raw escape in the logs:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(r"\u{1b}[2J\u{1b}[31mred")
                && out.stderr.contains("1.0/../../../../library/nginx"),
            "each bad tag is named, escaped, in a warning:\n{}",
            out.stderr
        );
        assert_eq!(out.stdout.lines().filter(|l| l.contains(" -> ")).count(), 1);
    }
    // At the registry target: the valid tag only, and nginx untouched.
    assert_eq!(tags(&target, "vendor/tool").await, vec!["1.0".to_string()]);
    assert_eq!(
        head_manifest(&target, "vendor/tool", "1.0").await,
        Some(wanted.digest.clone())
    );
    assert_eq!(
        head_manifest(&target, "library/nginx", "latest").await,
        Some(current.digest.clone())
    );
    assert!(
        !up.seen()
            .iter()
            .any(|s| s.path.contains("library/nginx") || s.path.contains("..")),
        "upstream was asked for something outside vendor/tool"
    );
    // In the layout: one tag in vendor/tool's index.json, nothing else written.
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("vendor/tool/index.json")).expect("index.json"),
    )
    .unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(names, vec!["1.0"]);
    // (Besides mirrorsync's own state file.)
    let top: Vec<String> = std::fs::read_dir(&layout)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with(".mirrorsync-state-"))
        .collect();
    assert_eq!(top, vec!["vendor".to_string()]);
    assert!(!layout.join("library").exists());
}

/// Tag lists without end, by tags (pages of a thousand long tags), by bytes (pages padded to
/// 1 MiB) and by pages (one tag each): each selection fails with the limit it hit, the run goes
/// on, and peak RSS stays far under the chart's limit.
#[tokio::test(flavor = "multi_thread")]
async fn endless_tag_pages_fail_the_selection_within_bounded_memory() {
    let by_tags = Hostile::endless_tags("vendor/tags", 1000, 100, 0).await;
    let by_bytes = Hostile::endless_tags("vendor/big", 10, 20, 1 << 20).await;
    let by_pages = Hostile::endless_tags("vendor/many", 1, 10, 0).await;
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let fine = small_image(&upstream, "team/fine", "1.0", 21).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            "target:\n  registry: \"{t}\"\n  insecure: true\n\
             registries:\n  \"{t2}\": {{ insecure: true }}\n  \"{b}\": {{ insecure: true }}\n  \"{p}\": {{ insecure: true }}\n  \"{u}\": {{ insecure: true }}\n\
             images:\n  - {{ source: \"{t2}/vendor/tags\", tags: [{{ all: true }}] }}\n  \
             - {{ source: \"{b}/vendor/big\", tags: [{{ all: true }}] }}\n  \
             - {{ source: \"{p}/vendor/many\", tags: [{{ all: true }}] }}\n  - {u}/team/fine:1.0\n",
            t = target.host(),
            t2 = by_tags.host(),
            b = by_bytes.host(),
            p = by_pages.host(),
            u = upstream.host(),
        ),
    );
    let (out, rss_kib) = run_measured(&["sync", "--once", "--config", &config]).await;
    eprintln!("endless tag pages: peak RSS {} MiB", rss_kib / 1024);
    out.assert_code(1);
    let many_tags = selection_failed(&out, "vendor/tags");
    assert!(many_tags.contains("more than 250000 tags"), "{many_tags}");
    let big = selection_failed(&out, "vendor/big");
    assert!(
        big.contains("more than 33554432 bytes over its pages"),
        "{big}"
    );
    let many = selection_failed(&out, "vendor/many");
    assert!(many.contains("more than 10000 pages"), "{many}");
    let pages = by_pages.seen().len();
    assert!(pages <= 10_001, "{pages} requests for pages");
    assert_eq!(
        head_manifest(&target, "team/fine", "1.0").await,
        Some(fine.digest)
    );
    assert!(
        rss_kib < CHART_MEMORY_KIB / 2,
        "peak RSS {} MiB against endless tag lists",
        rss_kib / 1024
    );
}

/// An index of 160 child manifests of almost 4 MiB each (640 MiB of manifests): it is
/// mirrored whole (index and every child at the target), and peak RSS stays under the
/// chart's limit because a child's bytes are let go once it is pushed.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_index_is_mirrored_within_the_chart_memory_limit() {
    const CHILDREN: usize = 160;
    let (upstream, index_digest) =
        Hostile::huge_index("vendor/huge", CHILDREN, (4 << 20) - 4096).await;
    let target = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &ConfigYaml::to_registry(&target.host())
            .upstream(&upstream.host())
            .images(&[format!("{}/vendor/huge:v1", upstream.host())])
            .yaml(),
    );
    let (out, rss_kib) = run_measured(&["sync", "--once", "--config", &config]).await;
    eprintln!(
        "huge index ({CHILDREN} x 4 MiB): peak RSS {} MiB",
        rss_kib / 1024
    );
    out.assert_code(0);
    assert_eq!(
        head_manifest(&target, "vendor/huge", "v1").await,
        Some(index_digest.clone())
    );
    let (bytes, _, _) = get_manifest(&target, "vendor/huge", &index_digest)
        .await
        .expect("index at the target");
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let children = index["manifests"].as_array().unwrap();
    assert_eq!(children.len(), CHILDREN);
    for child in children.iter().step_by(37) {
        let digest = child["digest"].as_str().unwrap();
        assert_eq!(
            head_manifest(&target, "vendor/huge", digest)
                .await
                .as_deref(),
            Some(digest)
        );
    }
    assert!(
        rss_kib < CHART_MEMORY_KIB,
        "peak RSS {} MiB for a huge index",
        rss_kib / 1024
    );
    // Each child was fetched once.
    let gets = upstream
        .seen()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/manifests/sha256:"))
        .filter(|r| !r.path.ends_with(&index_digest))
        .count();
    assert_eq!(gets, CHILDREN);
}
