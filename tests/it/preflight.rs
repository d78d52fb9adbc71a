//! User story: before my first sync, `mirrorsync check --connect` tells me the truth about what
//! the sync will need: pull access to each upstream repository, push access to the target, a
//! writable OCI layout directory, with the credentials a sync would use (`auth:` or my Docker
//! `config.json`). Each failing line says which of these failed and why; then it exits 1.

use crate::common;

use std::path::Path;

use base64::Engine as _;
use common::*;

async fn check(config: &Path, docker_config_dir: &Path) -> Output {
    mirrorsync_with_env(
        &["check", "--connect", "--config", config.to_str().unwrap()],
        &[("DOCKER_CONFIG", docker_config_dir.to_str().unwrap())],
    )
    .await
}

fn failed_lines(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("FAILED"))
        .collect()
}

fn write_docker_config(dir: &Path, host: &str, user: &str, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        format!("{{\"auths\": {{\"{host}\": {{\"auth\": \"{auth}\"}}}}}}\n"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_connect_proves_push_access_with_the_credentials_a_sync_uses() {
    let ca = TestCa::new();
    let password = "Push-Pa55word-5e6f";
    let target = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        htpasswd: Some(("robot".into(), password.into())),
        token: None,
    })
    .await;
    let upstream = Registry::start().await;
    let img = push_image(&upstream, "team/app", "1.0", oci_image(31, 2048)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "target:\n  registry: \"{t}\"\n  ca_file: {ca}\n\
             registries:\n  \"{u}\": {{ insecure: true }}\n\
             images:\n  - {u}/team/app:1.0\n",
            t = target.host(),
            ca = ca.ca_pem_path().display(),
            u = upstream.host(),
        ),
    );

    // No `auth:` and no Docker config: the target refuses anonymous pushes, and check says so.
    let empty = dir.path().join("no-docker-config");
    std::fs::create_dir_all(&empty).unwrap();
    let out = check(&config, &empty).await;
    out.assert_code(1);
    let failed = failed_lines(&out);
    assert!(
        failed.iter().all(|l| l.contains("push to target")),
        "{}",
        out.stdout
    );
    assert!(
        failed
            .iter()
            .any(|l| l.contains(&format!("{}/team/app", target.host())) && l.contains("denied")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("ok      pull from {}/team/app", upstream.host())),
        "{}",
        out.stdout
    );

    // With the target's credentials in the Docker config.json: ok, and it really opened (and
    // cancelled) an upload session at the target, leaving nothing behind.
    let docker = dir.path().join("docker");
    write_docker_config(&docker, &target.host(), "robot", password);
    let mark = target.log_mark().await;
    let out = check(&config, &docker).await;
    out.assert_code(0);
    assert!(!out.stdout.contains(password), "{}", out.stdout);
    let log = target.access_log_since(mark).await;
    let ours = log.not_harness();
    assert!(
        ours.iter()
            .any(|a| a.method == "POST" && a.kind() == Some("uploads") && a.status == 202),
        "{}",
        log.dump()
    );
    assert!(
        ours.iter()
            .any(|a| a.method == "DELETE" && a.kind() == Some("uploads")),
        "{}",
        log.dump()
    );
    assert!(tags(&target, "team/app").await.is_empty());

    // A sync with the same Docker config pushes with the same credentials.
    let out = mirrorsync_with_env(
        &["sync", "--once", "--config", config.to_str().unwrap()],
        &[("DOCKER_CONFIG", docker.to_str().unwrap())],
    )
    .await;
    out.assert_code(0);
    let (_, _, digest) = get_manifest(&target, "team/app", "1.0").await.expect("tag");
    assert_eq!(digest, img.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_connect_fails_an_upstream_repository_without_pull_access() {
    let ca = TestCa::new();
    let password = "Pull-Pa55word-7a8b";
    let upstream = Registry::start_with(RegistryOptions {
        tls: Some(&ca),
        htpasswd: Some(("reader".into(), password.into())),
        token: None,
    })
    .await;
    push_image(&upstream, "team/app", "1.0", oci_image(32, 2048)).await;
    let open = Registry::start().await;
    push_image(&open, "team/other", "2.0", oci_image(33, 2048)).await;
    let target = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |auth: &str| {
        format!(
            "target:\n  registry: \"{t}\"\n  insecure: true\n\
             registries:\n  \"{u}\":\n    ca_file: {ca}\n{auth}  \"{o}\": {{ insecure: true }}\n\
             images:\n  - {u}/team/app:1.0\n  - {o}/team/other:2.0\n  - {o}/team/missing:1\n",
            t = target.host(),
            u = upstream.host(),
            o = open.host(),
            ca = ca.ca_pem_path().display(),
        )
    };
    let config = write_config(dir.path(), &yaml(""));
    let mark = upstream.log_mark().await;
    let out = check(&config, dir.path()).await;
    out.assert_code(1);
    let failed = failed_lines(&out);
    assert_eq!(failed.len(), 2, "{}", out.stdout);
    let app = format!("pull from {}/team/app", upstream.host());
    let missing = format!("pull from {}/team/missing", open.host());
    assert!(
        failed.iter().any(|l| l.contains(&app)
            && (l.to_lowercase().contains("authentication") || l.contains("401"))),
        "{}",
        out.stdout
    );
    assert!(
        failed
            .iter()
            .any(|l| l.contains(&missing) && l.contains("not found")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("ok      pull from {}/team/other", open.host())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ok      push to target"),
        "{}",
        out.stdout
    );
    // Asked with a HEAD: no pull spent.
    let log = upstream.access_log_since(mark).await;
    assert!(
        log.not_harness()
            .iter()
            .all(|a| a.method != "GET" || a.kind().is_none()),
        "{}",
        log.dump()
    );

    // With credentials for the protected upstream, its line is ok.
    std::fs::write(dir.path().join("reader-password"), format!("{password}\n")).unwrap();
    let config = write_config(
        dir.path(),
        &yaml("    auth: { username: reader, password_file: reader-password }\n"),
    );
    let out = check(&config, dir.path()).await;
    out.assert_code(1);
    assert!(
        out.stdout.contains(&format!("ok      {app}")),
        "{}",
        out.stdout
    );
    assert_eq!(failed_lines(&out).len(), 1, "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_connect_fails_an_unwritable_layout_directory() {
    let upstream = Registry::start().await;
    push_image(&upstream, "team/app", "1.0", oci_image(34, 2048)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |path: &Path| {
        format!(
            "target:\n  path: {}\nregistries:\n  \"{u}\": {{ insecure: true }}\n\
             images:\n  - {u}/team/app:1.0\n",
            path.display(),
            u = upstream.host()
        )
    };
    // A layout directory that cannot be created: its parent is a file (this holds for root too,
    // which file modes would not stop).
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let config = write_config(dir.path(), &yaml(&blocker.join("mirror")));
    let out = check(&config, dir.path()).await;
    out.assert_code(1);
    let failed = failed_lines(&out);
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(
        failed[0].contains("write to OCI layout") && failed[0].contains("not a directory"),
        "{}",
        out.stdout
    );

    // A writable place: ok, and the check leaves nothing behind.
    let parent = dir.path().join("writable");
    std::fs::create_dir_all(&parent).unwrap();
    let config = write_config(dir.path(), &yaml(&parent.join("mirror")));
    let out = check(&config, dir.path()).await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("ok      write to OCI layout"),
        "{}",
        out.stdout
    );
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
}
