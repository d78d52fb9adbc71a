//! User story: the run state mirrorsync keeps in the target (`mirrorsync/state`) does not pile
//! up. A pass that changed nothing but timestamps writes nothing, and a pass that does write
//! deletes the manifest it replaces, so the repository holds one manifest per state tag however
//! many passes ran; a registry that refuses deletes (405 UNSUPPORTED) is no error.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::util::free_port;
use common::*;

/// Manifest revisions distribution holds for `mirrorsync/state`, read from its storage.
fn state_manifests(target: &Registry) -> usize {
    let dir = target
        .storage_root()
        .join("docker/registry/v2/repositories/mirrorsync/state/_manifests/revisions/sha256");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join("link").is_file())
                .count()
        })
        .unwrap_or(0)
}

/// Writes (PUT, POST, PATCH) the code under test sent to `mirrorsync/state` since `mark`.
async fn state_writes(target: &Registry, mark: usize) -> usize {
    target
        .access_log_since(mark)
        .await
        .iter()
        .filter(|a| {
            !a.is_harness()
                && matches!(a.method.as_str(), "PUT" | "POST" | "PATCH")
                && a.repo().as_deref() == Some("mirrorsync/state")
        })
        .count()
}

fn config(dir: &Path, upstream: &str, target: &str) -> String {
    write_config(
        dir,
        &format!(
            "schedule: \"*/1 * * * * *\"\ntarget:\n  registry: \"{target}\"\n  insecure: true\n\
             registries:\n  \"{upstream}\":\n    insecure: true\nimages:\n  - {upstream}/team/app:1\n"
        ),
    )
    .display()
    .to_string()
}

async fn push_version(upstream: &Registry, n: u64) {
    push_image(upstream, "team/app", "1", oci_image(900 + n, 1_500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_repository_stays_bounded_over_many_passes() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_version(&upstream, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &upstream.host(), &target.host());
    mirrorsync(&["sync", "--once", "--config", &config])
        .await
        .assert_code(0);
    assert_eq!(state_manifests(&target), 1);

    // Ten passes where nothing changed: not one write to the state.
    let mark = target.log_mark().await;
    for _ in 0..10 {
        mirrorsync(&["sync", "--once", "--config", &config])
            .await
            .assert_code(0);
    }
    assert_eq!(
        state_writes(&target, mark).await,
        0,
        "no-op passes rewrote the state"
    );

    // The daemon, a pass every second for a few seconds: no write either.
    let mark = target.log_mark().await;
    let port = free_port();
    let mut daemon = tokio::process::Command::new(bin_path())
        .args(["sync", "--config", &config, "--run-now"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;
    let passes = target
        .access_log_since(mark)
        .await
        .iter()
        .filter(|a| {
            !a.is_harness()
                && a.method == "GET"
                && a.kind() == Some("manifests")
                && a.repo().as_deref() == Some("mirrorsync/state")
        })
        .count();
    assert!(passes >= 3, "the daemon ran {passes} passes");
    assert_eq!(
        state_writes(&target, mark).await,
        0,
        "{passes} daemon passes"
    );

    // Eight passes that each change the state (a new upstream digest, new blob locations):
    // each writes it, and deletes the manifest it replaces.
    for n in 1..=8 {
        push_version(&upstream, n).await;
        let mark = target.log_mark().await;
        mirrorsync(&["sync", "--once", "--config", &config])
            .await
            .assert_code(0);
        assert!(
            state_writes(&target, mark).await > 0,
            "pass {n} saved its state"
        );
        assert_eq!(
            state_manifests(&target),
            1,
            "pass {n}: the previous state manifest is deleted"
        );
    }
    assert_eq!(tags(&target, "mirrorsync/state").await, vec!["latest"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_without_deletes_is_no_error() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let proxy = Proxy::start(&target).await;
    proxy.add(Rule::new(
        "DELETE /v2/*",
        Action::respond(
            405,
            &[("Content-Type", "application/json")],
            r#"{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}"#,
        ),
    ));
    push_version(&upstream, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &upstream.host(), &proxy.host());
    for n in 1..=3 {
        push_version(&upstream, n).await;
        let out = mirrorsync(&["sync", "--once", "--config", &config]).await;
        out.assert_code(0);
        assert!(
            !out.stderr.contains("WARN") && !out.stderr.contains("ERROR"),
            "a refused delete is not worth a warning:\n{}",
            out.stderr
        );
    }
    // Nothing could be deleted: the old manifests stay, the state still reads back.
    assert_eq!(state_manifests(&target), 3);
    assert!(
        head_manifest(&target, "mirrorsync/state", "latest")
            .await
            .is_some()
    );
}
