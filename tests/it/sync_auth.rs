//! User stories about reaching registries that need TLS and credentials: a target behind TLS
//! with a private CA and htpasswd, upstreams and targets behind Bearer token auth, credentials
//! from `auth:` (env var or file) or from a Docker `config.json`. Results are checked at the
//! registries themselves (digests recomputed, access logs, the token server's own records);
//! secrets must never show up in mirrorsync's output.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::util::percent_decode;
use common::*;
use reqwest::StatusCode;

const PASSWORD_VAR: &str = "MIRRORSYNC_TEST_PASSWORD";

/// `DOCKER_CONFIG` pointing at `dir` (which holds no config.json unless a test writes one), so
/// no credentials leak in from the machine running the tests.
fn env_with<'a>(dir: &'a Path, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("DOCKER_CONFIG", dir.to_str().unwrap())];
    env.extend_from_slice(extra);
    env
}

/// Runs `mirrorsync <args...> --config <config>` with `env`.
async fn run(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config.to_str().unwrap()]);
    mirrorsync_with_env(&all, env).await
}

/// Panics if any secret occurs anywhere in stdout or stderr.
fn assert_no_secret(out: &Output, secrets: &[&str]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "a secret ({} chars, starting {:?}) appears in the output\n--- stdout ---\n{}\n--- stderr ---\n{}",
            secret.len(),
            &secret[..secret.len().min(4)],
            out.stdout,
            out.stderr
        );
    }
    // No bearer token of any kind (a JWT starts with base64 of `{"`).
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains("eyJ") && !text.contains("Bearer ey"),
            "something that looks like a token appears in the output:\n{text}"
        );
    }
}

/// The first segment of the JWTs `ts` signs: the same for every token it issues (the header
/// carries the signing certificate), so any leaked token contains it.
async fn token_header_segment(reg: &Registry, ts: &TokenServer, user: &str, pass: &str) -> String {
    let url = format!(
        "{}?service={}&scope=repository:probe/probe:pull",
        ts.realm(),
        ts.service()
    );
    let v: serde_json::Value = reg
        .client()
        .http()
        .get(url)
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["token"].as_str().expect("token").to_string();
    let header = token.split('.').next().unwrap().to_string();
    assert!(header.len() > 100, "{header}");
    header
}

/// Asserts `repo:tag` at `reg` is exactly `img`: same manifest bytes and digest (recomputed),
/// every blob present with the right content.
async fn assert_mirrored(reg: &Registry, repo: &str, tag: &str, img: &PushedImage) {
    let (bytes, media_type, digest) = get_manifest(reg, repo, tag)
        .await
        .unwrap_or_else(|| panic!("{repo}:{tag} missing at the target"));
    assert_eq!(digest, img.digest, "{repo}:{tag} digest");
    assert_eq!(bytes, img.manifest_bytes, "{repo}:{tag} bytes");
    assert_eq!(media_type, img.media_type);
    let walked = assert_image_complete(reg, repo, tag).await;
    assert_eq!(walked.blobs.len(), img.blobs.len());
    for blob in &img.blobs {
        assert_eq!(
            blob_sha256(reg, repo, &blob.digest).await.as_deref(),
            Some(blob.digest.as_str()),
            "{repo}: blob {} content",
            blob.digest
        );
    }
}

/// An OCI image with two layers, pushed to `reg` as `repo:tag`.
async fn seed(reg: &Registry, repo: &str, tag: &str, seed: u64) -> PushedImage {
    push_image(
        reg,
        repo,
        tag,
        ImageSpec::new(
            Format::Oci,
            vec![layer(seed, 300_000), layer(seed + 1, 70_000)],
        )
        .label("seed", &seed.to_string()),
    )
    .await
}

fn lower(out: &Output) -> String {
    format!("{}\n{}", out.stdout, out.stderr).to_lowercase()
}

// ---------------------------------------------------------------------------------------------
// Target behind TLS (private CA) and htpasswd.

enum PasswordFrom {
    Env,
    File,
}

/// Given an OCI image on a plain upstream and a target behind TLS with the test CA and
/// htpasswd, when I sync with the password from an env var or a file, then the target holds the
/// image complete, `check --connect` reaches both registries, and a second pass changes nothing.
async fn tls_htpasswd_target_story(from: PasswordFrom) {
    let ca = TestCa::new();
    let password = match from {
        PasswordFrom::Env => "Env-Pa55word-7f3a91",
        PasswordFrom::File => "File-Pa55word-9c1e27",
    };
    let target = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        htpasswd: Some(("robot".into(), password.into())),
        token: None,
    })
    .await;
    let upstream = Registry::start().await;
    let img = seed(&upstream, "team/app", "1.0", 11).await;

    let dir = tempfile::tempdir().unwrap();
    let (ca_file, password_line, env) = match from {
        PasswordFrom::Env => (
            ca.ca_pem_path().display().to_string(),
            format!("password_env: {PASSWORD_VAR}"),
            env_with(dir.path(), &[(PASSWORD_VAR, password)]),
        ),
        PasswordFrom::File => {
            // Relative paths, resolved from the config file's directory; the file's trailing
            // newline is not part of the password.
            std::fs::create_dir_all(dir.path().join("certs")).unwrap();
            std::fs::copy(ca.ca_pem_path(), dir.path().join("certs/ca.pem")).unwrap();
            std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
            std::fs::write(
                dir.path().join("secrets/target-password"),
                format!("{password}\n"),
            )
            .unwrap();
            (
                "certs/ca.pem".to_string(),
                "password_file: secrets/target-password".to_string(),
                env_with(dir.path(), &[]),
            )
        }
    };
    let config = ConfigYaml::with_target(&format!(
        "  registry: \"{}\"\n  ca_file: {ca_file}\n  auth:\n    username: robot\n    {password_line}\n",
        target.host()
    ))
    .upstream(&upstream.host())
    .images(&[upstream.image_ref("team/app", "1.0")])
    .write(dir.path());
    // Run from another directory, so relative paths can only work if resolved from the file.
    let out = run(&["sync", "--once"], &config, &env).await;
    out.assert_code(0);
    assert_no_secret(&out, &[password]);
    assert_mirrored(&target, "team/app", "1.0", &img).await;
    assert!(
        out.stdout
            .contains(&format!("-> team/app:1.0 {}", img.digest)),
        "summary line for the synced tag:\n{}",
        out.stdout
    );
    // skopeo, over TLS with the CA and the credentials, sees the same bytes.
    let raw = skopeo_inspect_raw(
        &format!("docker://{}", target.image_ref("team/app", "1.0")),
        &[
            &format!("--cert-dir={}", ca.cert_dir().display()),
            &format!("--creds=robot:{password}"),
        ],
    )
    .await;
    assert_eq!(raw, img.manifest_bytes);

    // `check --connect` reaches the TLS target (with the CA and credentials) and the upstream.
    let out = run(&["check", "--connect"], &config, &env).await;
    out.assert_code(0);
    assert_no_secret(&out, &[password]);

    // A second pass: unchanged, nothing written, nothing fetched upstream but a HEAD.
    let (t_mark, u_mark) = (target.log_mark().await, upstream.log_mark().await);
    let out = run(&["sync", "--once"], &config, &env).await;
    out.assert_code(0);
    let t_log = target.access_log_since(t_mark).await;
    let u_log = upstream.access_log_since(u_mark).await;
    assert_eq!(t_log.mirrored_writes(), 0, "{}", t_log.dump());
    assert_eq!(u_log.manifest_gets(None), 0, "{}", u_log.dump());
    assert_eq!(u_log.blob_gets(None), 0, "{}", u_log.dump());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_htpasswd_target_password_from_env() {
    tls_htpasswd_target_story(PasswordFrom::Env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_htpasswd_target_password_from_file() {
    tls_htpasswd_target_story(PasswordFrom::File).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_target_password_fails_the_tag_without_revealing_it() {
    let (ca, target) = tls_robot_target("Right-Pa55word-0b8c").await;
    let upstream = Registry::start().await;
    seed(&upstream, "team/app", "1.0", 31).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "Wr0ng-Pa55word-d41d8cd9";
    let config = robot_over_tls(dir.path(), &target, &ca, &upstream);
    let env = env_with(dir.path(), &[(PASSWORD_VAR, wrong)]);
    for level in ["info", "debug"] {
        let out = run(&["--log-level", level, "sync", "--once"], &config, &env).await;
        out.assert_code(1);
        assert_no_secret(&out, &[wrong]);
        let text = lower(&out);
        assert!(
            text.contains("authentication") && text.contains("failed"),
            "should say authentication failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.lines().any(|l| l.starts_with("FAILED")
                && l.contains("team/app:1.0")
                && l.to_lowercase().contains("authentication")),
            "a FAILED line naming the tag and the reason:\n{}",
            out.stdout
        );
        assert!(text.contains(&target.host()), "should name the target host");
    }
    assert!(tags(&target, "team/app").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_target_without_ca_file_fails_with_a_certificate_error() {
    let (_ca, target) = tls_robot_target("Some-Pa55word-1a2b").await;
    let upstream = Registry::start().await;
    seed(&upstream, "team/app", "1.0", 41).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigYaml::with_target(&format!(
        "  registry: \"{}\"\n  auth: {{ username: robot, password_env: {PASSWORD_VAR} }}\n",
        target.host()
    ))
    .upstream(&upstream.host())
    .images(&[upstream.image_ref("team/app", "1.0")])
    .write(dir.path());
    let env = env_with(dir.path(), &[(PASSWORD_VAR, "Some-Pa55word-1a2b")]);
    let mark = target.log_mark().await;
    let out = run(&["sync", "--once"], &config, &env).await;
    out.assert_code(1);
    assert_no_secret(&out, &["Some-Pa55word-1a2b"]);
    assert!(
        lower(&out).contains("certificate"),
        "should explain the certificate is not trusted:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("FAILED") && l.to_lowercase().contains("certificate")),
        "a FAILED line with the certificate error:\n{}",
        out.stdout
    );
    // The handshake failed: no HTTP request from mirrorsync reached the target.
    let log = target.access_log_since(mark).await;
    assert!(log.not_harness().is_empty(), "{}", log.dump());
    assert!(tags(&target, "team/app").await.is_empty());

    // `check --connect` says the same.
    let out = run(&["check", "--connect"], &config, &env).await;
    out.assert_code(1);
    assert!(lower(&out).contains("certificate"), "{}", out.stdout);
}

/// The platform's roots (here set with `SSL_CERT_FILE`/`SSL_CERT_DIR`, as in a container) are
/// read when a TLS host needs them, and only then: a TLS upstream without `ca_file` is trusted
/// through them; a run between plain-HTTP registries needs none (it used to stop before its
/// first request, "building HTTP client: builder error", on a machine without CA certificates);
/// a TLS upstream with no platform roots fails on its own line, saying so.
#[tokio::test(flavor = "multi_thread")]
async fn platform_roots_are_read_only_for_tls_hosts() {
    let ca = TestCa::new();
    let upstream = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        ..Default::default()
    })
    .await;
    let plain = Registry::start().await;
    let target = Registry::start().await;
    let img = seed(&upstream, "team/app", "1.0", 61).await;
    let plain_img = seed(&plain, "team/lib", "2.0", 63).await;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let config = |images: &str| {
        write_config(
            dir.path(),
            &format!(
                "target:\n  registry: \"{t}\"\n  insecure: true\n\
                 registries:\n  \"{p}\": {{ insecure: true }}\n\
                 images:\n{images}",
                t = target.host(),
                p = plain.host(),
            ),
        )
    };
    let ca_file = ca.ca_pem_path();
    let roots_from_env = [
        ("SSL_CERT_FILE", ca_file.to_str().unwrap()),
        ("SSL_CERT_DIR", empty.to_str().unwrap()),
    ];
    let no_roots = [
        ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
        ("SSL_CERT_DIR", empty.to_str().unwrap()),
    ];

    let tls_only = config(&format!("  - {}/team/app:1.0\n", upstream.host()));
    let out = run(
        &["sync", "--once"],
        &tls_only,
        &env_with(dir.path(), &roots_from_env),
    )
    .await;
    out.assert_code(0);
    assert_mirrored(&target, "team/app", "1.0", &img).await;

    let plain_only = config(&format!("  - {}/team/lib:2.0\n", plain.host()));
    let out = run(
        &["sync", "--once"],
        &plain_only,
        &env_with(dir.path(), &no_roots),
    )
    .await;
    out.assert_code(0);
    assert_mirrored(&target, "team/lib", "2.0", &plain_img).await;

    let plain_next = seed(&plain, "team/lib", "2.1", 65).await;
    let both = config(&format!(
        "  - {}/team/app:1.1\n  - {}/team/lib:2.1\n",
        upstream.host(),
        plain.host()
    ));
    let out = run(&["sync", "--once"], &both, &env_with(dir.path(), &no_roots)).await;
    out.assert_code(1);
    let failed = failed_line(&out, "team/app:1.1");
    assert!(
        failed.to_lowercase().contains("no ca certificates"),
        "the TLS upstream's line says why:\n{}",
        out.stdout
    );
    // The plain-HTTP tag is not affected.
    assert_mirrored(&target, "team/lib", "2.1", &plain_next).await;
}

/// A certificate the client does not trust will not become trusted by asking again: the tag
/// fails at once, after a handshake or two, not after a round of backoff retries.
#[tokio::test(flavor = "multi_thread")]
async fn untrusted_certificate_is_not_retried() {
    let ca = TestCa::new();
    let target = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        ..Default::default()
    })
    .await;
    let upstream = Registry::start().await;
    seed(&upstream, "team/app", "1.0", 43).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigYaml::with_target(&format!("  registry: \"{}\"\n", target.host()))
        .upstream(&upstream.host())
        .images(&[upstream.image_ref("team/app", "1.0")])
        .write(dir.path());
    let handshakes = || target.registry_log().matches("TLS handshake error").count();
    let before = handshakes();
    let started = std::time::Instant::now();
    let out = run(&["sync", "--once"], &config, &env_with(dir.path(), &[])).await;
    let took = started.elapsed();
    out.assert_code(1);
    assert!(lower(&out).contains("certificate"), "{}", out.stdout);
    // The server logs each refused handshake (just before mirrorsync sees the failure).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let tries = handshakes() - before;
    assert!(
        tries <= 2,
        "an untrusted certificate was tried {tries} times ({took:.1?}) for one tag"
    );
}

// ---------------------------------------------------------------------------------------------
// Bearer token auth.

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_upstream_with_credentials_from_config() {
    let user = "puller";
    let password = "Pull-Pa55word-3c4d5e";
    let (ts, upstream) = Registry::start_with_token_user(user, password).await;
    let img = seed(&upstream, "team/app", "1.0", 51).await;
    // Anonymous pulls are refused.
    let r = upstream
        .anonymous_client()
        .get("/v2/team/app/manifests/1.0")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let jwt_header = token_header_segment(&upstream, &ts, user, password).await;

    let dir = tempfile::tempdir().unwrap();
    let env = env_with(dir.path(), &[(PASSWORD_VAR, password)]);
    for (level, sub) in [("info", "a"), ("debug", "b"), ("trace", "c")] {
        let target = Registry::start().await;
        let config_dir = dir.path().join(sub);
        std::fs::create_dir_all(&config_dir).unwrap();
        let config = ConfigYaml::to_registry(&target.host())
            .upstream(&upstream.host())
            .upstream_lines(&format!(
                "    auth:\n      username: {user}\n      password_env: {PASSWORD_VAR}\n"
            ))
            .images(&[upstream.image_ref("team/app", "1.0")])
            .write(&config_dir);
        ts.clear_requests();
        let u_mark = upstream.log_mark().await;
        let out = run(&["--log-level", level, "sync", "--once"], &config, &env).await;
        out.assert_code(0);
        assert_no_secret(&out, &[password, &jwt_header]);
        assert_mirrored(&target, "team/app", "1.0", &img).await;

        // What mirrorsync asked the token server for: Basic credentials, pull only.
        let reqs: Vec<TokenRequest> = ts
            .requests()
            .into_iter()
            .filter(|r| r.user_agent != HARNESS_USER_AGENT)
            .collect();
        assert!(!reqs.is_empty(), "mirrorsync asked for no token");
        for r in &reqs {
            assert!(r.had_basic, "token request without credentials: {r:?}");
            assert_eq!(r.basic_user.as_deref(), Some(user), "{r:?}");
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.service.as_deref(), Some(ts.service()), "{r:?}");
            assert_eq!(
                r.scopes,
                vec!["repository:team/app:pull".to_string()],
                "upstream scopes must be pull only: {r:?}"
            );
        }
        // Upstream saw reads only from mirrorsync, all authorised.
        let log = upstream.access_log_since(u_mark).await.not_harness();
        assert_eq!(log.writes(None), 0, "{}", log.dump());
        assert!(log.manifest_gets(Some("team/app")) >= 1, "{}", log.dump());
        assert!(
            log.iter()
                .all(|a| a.status != 401 || a.path == "/v2/" || a.path == "/v2"),
            "unauthorised requests besides the ping:\n{}",
            log.dump()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_target_push_and_cross_repository_mount() {
    let user = "pusher";
    let password = "Push-Pa55word-6f7a8b";
    let (ts, target) = Registry::start_with_token_user(user, password).await;
    let upstream = Registry::start().await;
    // Two images in two repositories sharing their first layer.
    let shared = layer(61, 400_000);
    let shared_digest = sha256_digest(&shared);
    let one = push_image(
        &upstream,
        "apps/one",
        "1",
        ImageSpec::new(Format::Oci, vec![shared.clone(), layer(62, 50_000)]),
    )
    .await;
    let two = push_image(
        &upstream,
        "apps/two",
        "1",
        ImageSpec::new(Format::Docker, vec![shared, layer(63, 60_000)]),
    )
    .await;
    let jwt_header = token_header_segment(&target, &ts, user, password).await;

    let dir = tempfile::tempdir().unwrap();
    let config = ConfigYaml::to_registry(&target.host())
        .target_lines(&format!(
            "  auth: {{ username: {user}, password_env: {PASSWORD_VAR} }}\n"
        ))
        .upstream(&upstream.host())
        .images(&[
            upstream.image_ref("apps/one", "1"),
            upstream.image_ref("apps/two", "1"),
        ])
        .write(dir.path());
    let env = env_with(dir.path(), &[(PASSWORD_VAR, password)]);
    ts.clear_requests();
    let (t_mark, u_mark) = (target.log_mark().await, upstream.log_mark().await);
    let out = run(&["sync", "--once"], &config, &env).await;
    out.assert_code(0);
    assert_no_secret(&out, &[password, &jwt_header]);
    assert_mirrored(&target, "apps/one", "1", &one).await;
    assert_mirrored(&target, "apps/two", "1", &two).await;

    // The shared layer crossed the upstream link once.
    let u_log = upstream.access_log_since(u_mark).await.not_harness();
    let shared_gets = u_log
        .iter()
        .filter(|a| a.method == "GET" && a.reference().as_deref() == Some(&shared_digest))
        .count();
    assert_eq!(shared_gets, 1, "{}", u_log.dump());

    // Exactly one repository got the shared layer by a successful cross-repository mount.
    let t_log = target.access_log_since(t_mark).await.not_harness();
    let query = |a: &Access| percent_decode(&a.query);
    let mounts: Vec<&Access> = t_log
        .iter()
        .filter(|a| {
            a.method == "POST"
                && a.kind() == Some("uploads")
                && query(a).contains(&format!("mount={shared_digest}"))
                && a.status == 201
        })
        .collect();
    assert_eq!(
        mounts.len(),
        1,
        "one mount of the shared layer:\n{}",
        t_log.dump()
    );
    let second = mounts[0].repo().unwrap();
    let first = if second == "apps/one" {
        "apps/two"
    } else {
        "apps/one"
    };
    assert!(
        query(mounts[0]).contains(&format!("from={first}")),
        "mounted from the other repository: {:?}",
        mounts[0]
    );
    // The first repository uploaded it; the second never uploaded it (no PUT ?digest= for it,
    // and only as many PATCHes as its own two other blobs needed).
    let committed = |repo: &str| -> BTreeSet<String> {
        t_log
            .iter()
            .filter(|a| {
                a.method == "PUT"
                    && a.kind() == Some("uploads")
                    && a.repo().as_deref() == Some(repo)
            })
            .filter_map(|a| {
                query(a)
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("digest=").map(String::from))
            })
            .collect()
    };
    assert!(
        committed(first).contains(&shared_digest),
        "{}",
        t_log.dump()
    );
    let second_img = if second == "apps/one" { &one } else { &two };
    let own: BTreeSet<String> = second_img
        .blobs
        .iter()
        .map(|b| b.digest.clone())
        .filter(|d| *d != shared_digest)
        .collect();
    assert_eq!(committed(&second), own, "{}", t_log.dump());
    // One upload session per own blob (small blobs go up in the final PUT); none for the
    // shared layer, which was mounted.
    let sessions = t_log
        .iter()
        .filter(|a| {
            a.method == "POST"
                && a.repo().as_deref() == Some(second.as_str())
                && !a.query.contains("mount=")
        })
        .count();
    assert_eq!(sessions, own.len(), "{}", t_log.dump());

    // Pushes went through the token server with credentials; the mount asked for push on the
    // second repository and pull on the first, in one token.
    let reqs: Vec<TokenRequest> = ts
        .requests()
        .into_iter()
        .filter(|r| r.user_agent != HARNESS_USER_AGENT)
        .collect();
    assert!(
        reqs.iter()
            .all(|r| r.had_basic && r.basic_user.as_deref() == Some(user) && r.status == 200),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter().any(
            |r| r.scopes.contains(&format!("repository:{second}:pull,push"))
                && r.scopes.contains(&format!("repository:{first}:pull"))
        ),
        "a token for the mount: {reqs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_config_credentials_for_a_token_auth_upstream() {
    let user = "cfg-user";
    let password = "Cfg-Pa55word-ab12cd";
    let (ts, upstream) = Registry::start_with_token_user(user, password).await;
    let img = seed(&upstream, "team/app", "1.0", 71).await;
    let jwt_header = token_header_segment(&upstream, &ts, user, password).await;
    let auth_b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-docker-config-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let docker_dir = dir.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    std::fs::write(
        docker_dir.join("config.json"),
        format!(
            "{{\"auths\": {{\"{u}\": {{\"auth\": \"{auth_b64}\"}}}}}}\n",
            u = upstream.host()
        ),
    )
    .unwrap();
    let yaml = |target: &Registry, docker_config_line: &str| {
        // `docker_config:` is a top-level key, written where the target block ends.
        ConfigYaml::to_registry(&target.host())
            .target_lines(docker_config_line)
            .upstream(&upstream.host())
            .images(&[upstream.image_ref("team/app", "1.0")])
            .yaml()
    };
    let empty_env = [("DOCKER_CONFIG", empty.to_str().unwrap())];

    // Control: no credentials anywhere, so the upstream refuses (exit 1, auth error).
    let target = Registry::start().await;
    let config = write_config(dir.path(), &yaml(&target, ""));
    let out = run(&["sync", "--once"], &config, &empty_env).await;
    out.assert_code(1);
    assert!(
        lower(&out).contains("denied") || lower(&out).contains("authentication"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(tags(&target, "team/app").await.is_empty());

    // With `docker_config:` (relative to the config file), and no `auth:` key.
    ts.clear_requests();
    let config = write_config(
        dir.path(),
        &yaml(&target, "docker_config: docker/config.json\n"),
    );
    let out = run(
        &["--log-level", "debug", "sync", "--once"],
        &config,
        &empty_env,
    )
    .await;
    out.assert_code(0);
    assert_no_secret(&out, &[password, &auth_b64, &jwt_header]);
    assert_mirrored(&target, "team/app", "1.0", &img).await;
    let reqs: Vec<TokenRequest> = ts
        .requests()
        .into_iter()
        .filter(|r| r.user_agent != HARNESS_USER_AGENT)
        .collect();
    assert!(!reqs.is_empty());
    assert!(
        reqs.iter().all(|r| r.had_basic
            && r.basic_user.as_deref() == Some(user)
            && r.status == 200
            && r.scopes == ["repository:team/app:pull"]),
        "{reqs:#?}"
    );

    // Without the key, the default `$DOCKER_CONFIG/config.json` is used.
    let target2 = Registry::start().await;
    let config = write_config(dir.path(), &yaml(&target2, ""));
    let out = run(
        &["sync", "--once"],
        &config,
        &[("DOCKER_CONFIG", docker_dir.to_str().unwrap())],
    )
    .await;
    out.assert_code(0);
    assert_no_secret(&out, &[password, &auth_b64, &jwt_header]);
    assert_mirrored(&target2, "team/app", "1.0", &img).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_connect_rejects_wrong_target_credentials() {
    let (ca, target) = tls_robot_target("Right-Pa55word-0b8c").await;
    let upstream = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "Wr0ng-Pa55word-d41d8cd9";
    let config = robot_over_tls(dir.path(), &target, &ca, &upstream);
    let env = env_with(dir.path(), &[(PASSWORD_VAR, wrong)]);
    // Given credentials the target rejects, when I check connectivity, then the check fails
    // and says why (as `sync` does), without showing the password.
    let out = run(&["check", "--connect"], &config, &env).await;
    out.assert_code(1);
    assert_no_secret(&out, &[wrong]);
    assert!(lower(&out).contains("authentication"), "{}", out.stdout);
}

/// Tokens are renewed before they expire during a long run, without a 401 round trip each
/// time and without loops.
#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_are_renewed_before_they_expire() {
    let user = "puller";
    let password = "Renew-Pa55word-9d8c";
    let ts = TokenServer::start_with_ttl(vec![(user.into(), password.into())], false, 2);
    let upstream = Registry::start_with(RegistryOptions {
        token: Some(&ts),
        ..Default::default()
    })
    .await;
    for (i, repo) in ["team/a", "team/b", "team/c"].iter().enumerate() {
        seed(&upstream, repo, "1", 70 + i as u64).await;
    }
    let target = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "target: {{ registry: \"{t}\", insecure: true }}\n\
             concurrency: 1\n\
             registries:\n  \"{u}\":\n    insecure: true\n    requests_per_second: 3\n    burst: 1\n    \
             auth: {{ username: {user}, password_env: {PASSWORD_VAR} }}\n\
             images: [\"{u}/team/a:1\", \"{u}/team/b:1\", \"{u}/team/c:1\"]\n",
            t = target.host(),
            u = upstream.host(),
        ),
    );
    ts.clear_requests();
    let mark = upstream.log_mark().await;
    let started = std::time::Instant::now();
    let out = run(
        &["sync", "--once"],
        &config,
        &env_with(dir.path(), &[(PASSWORD_VAR, password)]),
    )
    .await;
    out.assert_code(0);
    let took = started.elapsed();
    let requests: Vec<TokenRequest> = ts
        .requests()
        .into_iter()
        .filter(|r| r.user_agent != HARNESS_USER_AGENT)
        .collect();
    let mut per_scope: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &requests {
        *per_scope.entry(r.scopes.join(" ")).or_default() += 1;
    }
    assert!(
        took.as_secs_f64() > 3.0,
        "the run must outlive a token ({took:?})"
    );
    assert!(
        per_scope.values().any(|n| *n >= 2),
        "some pull token was renewed during the {took:?} run: {per_scope:?}"
    );
    assert!(
        per_scope.values().all(|n| *n <= 4),
        "tokens are cached, not fetched per request: {per_scope:?}"
    );
    assert!(requests.iter().all(|r| r.status == 200));
    // Renewal is proactive: no request was refused for an expired token. Only `GET /v2/`
    // meets a 401: the ping, to learn the challenge, and the connections opened ahead for
    // downloads (one per changed tag, no credentials needed).
    let log = upstream.access_log_since(mark).await;
    let refused = log
        .iter()
        .filter(|a| a.status == 401 && !a.is_harness() && a.path != "/v2/")
        .count();
    assert_eq!(refused, 0, "{}", log.dump());
    let pings = log
        .iter()
        .filter(|a| a.path == "/v2/" && !a.is_harness())
        .count();
    assert!((1..=4).contains(&pings), "{}", log.dump());
}

/// Given an upstream serving HTTPS (distribution offers HTTP/2 over ALPN), when I sync four
/// tags with layers of 300 kB, 70 kB and 3 MiB, then the small requests (HEADs, manifests,
/// config blobs) are HTTP/2 on one shared connection (one TCP and one TLS handshake
/// for all of them), while every layer over 64 KiB downloads over HTTP/1.1 on a connection of
/// its own (one opened ahead per changed tag with a `GET /v2/`), so on a long link the small
/// answers do not queue behind layer bytes, nor share one flow's part of the link with them.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_upstream_gets_small_requests_over_one_http2_connection_and_layers_on_their_own() {
    let ca = TestCa::new();
    let upstream = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        ..Default::default()
    })
    .await;
    let target = Registry::start().await;
    let mut images = Vec::new();
    for i in 0..3u64 {
        images.push(seed(&upstream, "wan/app", &format!("v{i}"), 60 + 2 * i).await);
    }
    images.push(
        push_image(
            &upstream,
            "wan/app",
            "v3",
            ImageSpec::new(Format::Oci, vec![layer(70, 3 << 20), layer(71, 1000)]),
        )
        .await,
    );
    let layers: BTreeSet<String> = images
        .iter()
        .flat_map(|img| img.blobs.iter())
        .filter(|b| b.size > 64 * 1024)
        .map(|b| b.digest.clone())
        .collect();
    assert_eq!(layers.len(), 7, "3 x (300 kB, 70 kB) and the 3 MiB layer");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "target:\n  registry: \"{t}\"\n  insecure: true\n\
             registries:\n  \"{u}\":\n    ca_file: {ca}\n\
             images:\n  - source: {u}/wan/app\n    tags: [v0, v1, v2, v3]\n",
            t = target.host(),
            u = upstream.host(),
            ca = ca.ca_pem_path().display(),
        ),
    );
    let out = run(&["sync", "--once"], &config, &env_with(dir.path(), &[])).await;
    out.assert_code(0);
    for (i, img) in images.iter().enumerate() {
        assert_mirrored(&target, "wan/app", &format!("v{i}"), img).await;
    }
    upstream.settle_log().await;
    let access = std::fs::read_to_string(upstream.dir().join("access.log")).unwrap();
    let ours: Vec<&str> = access
        .lines()
        .filter(|l| l.contains("\"mirrorsync/"))
        .collect();
    let is_layer = |l: &str| layers.iter().any(|d| l.contains(d.as_str()));
    let is_opener = |l: &str| l.contains("\"GET /v2/ HTTP/1.1\"");
    let openers = ours.iter().filter(|l| is_opener(l)).count();
    assert!(
        (1..=4).contains(&openers),
        "one connection opened ahead per changed tag at most:\n{access}"
    );
    // The access-log lines among `lines` that were not over `protocol`.
    let not_over = |lines: &[&str], protocol: &str| -> String {
        let wanted = format!(" {protocol}\"");
        let other: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.contains(&wanted))
            .collect();
        other.join("\n")
    };
    let layer_gets: Vec<&str> = ours.iter().copied().filter(|l| is_layer(l)).collect();
    assert_eq!(layer_gets.len(), 7, "each layer downloaded once:\n{access}");
    let stray = not_over(&layer_gets, "HTTP/1.1");
    assert!(stray.is_empty(), "layers not over HTTP/1.1:\n{stray}");
    let small: Vec<&str> = ours
        .iter()
        .copied()
        .filter(|l| !is_layer(l) && !is_opener(l))
        .collect();
    // 4 HEADs (the first in place of the ping), 4 manifest GETs, 4 configs and the 1 kB layer.
    assert!(small.len() >= 13, "too few requests logged:\n{access}");
    let stray = not_over(&small, "HTTP/2.0");
    assert!(stray.is_empty(), "small requests not over HTTP/2:\n{stray}");
    // The registry's own log names each request's client address: the small requests (the
    // address-only `/v2/` aside: the openers) all come from one address (one
    // connection), which no layer download shares.
    let addresses = |layer: bool| -> BTreeSet<String> {
        upstream
            .registry_log()
            .lines()
            .filter(|l| l.contains("response completed") && l.contains("useragent=mirrorsync/"))
            .filter(|l| !l.contains("http.request.uri=/v2/ "))
            .filter(|l| is_layer(l) == layer)
            .filter_map(|l| l.split("remoteaddr=").nth(1))
            .filter_map(|rest| rest.trim_start_matches('"').split(['"', ' ']).next())
            .map(str::to_string)
            .collect()
    };
    let (shared, own) = (addresses(false), addresses(true));
    assert_eq!(
        shared.len(),
        1,
        "connections of the small requests: {shared:?}"
    );
    assert!(
        !own.is_empty() && shared.is_disjoint(&own),
        "{shared:?} {own:?}"
    );
}

/// `team/app:1.0` into a TLS `target` (trusting `ca`) as user `robot` with the password from
/// `PASSWORD_VAR`.
fn robot_over_tls(dir: &Path, target: &Registry, ca: &TestCa, upstream: &Registry) -> PathBuf {
    ConfigYaml::with_target(&format!(
        "  registry: \"{}\"\n  ca_file: {}\n  auth: {{ username: robot, password_env: {PASSWORD_VAR} }}\n",
        target.host(),
        ca.ca_pem_path().display()
    ))
    .upstream(&upstream.host())
    .images(&[upstream.image_ref("team/app", "1.0")])
    .write(dir)
}

/// A TLS registry (its own CA) that takes user `robot` with `password`.
async fn tls_robot_target(password: &str) -> (TestCa, Registry) {
    let ca = TestCa::new();
    let target = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        htpasswd: Some(("robot".into(), password.into())),
        token: None,
    })
    .await;
    (ca, target)
}
