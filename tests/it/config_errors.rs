//! User stories about a bad `sync.yaml` or a bad command line: mirrorsync refuses with exit 2,
//! says where the mistake is (`file:line:column: key.path: why`), and contacts nothing.
//!
//! Every config below points its target and its images at a real running registry; the
//! registry's own access log must stay empty across the run, which proves the error was found
//! before any network traffic (not even a `GET /v2/` ping).

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// What a config error must say.
struct Expected<'a> {
    line: u32,
    column: u32,
    key: &'a str,
    /// A fragment of the one-line reason.
    reason: &'a str,
}

/// Given a registry that holds an image, when I run mirrorsync (`sync --once`, `plan` and
/// `check`) with `yaml` (where `{HOST}` is the registry's `127.0.0.1:PORT`), then each exits 2
/// naming `sync.yaml:LINE:COLUMN: KEY` and the reason, and the registry saw no request at all.
async fn assert_config_error(yaml: &str, want: Expected<'_>) {
    let reg = Registry::start().await;
    push_image(&reg, "team/app", "1.0", oci_image(1, 2048)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("{HOST}", &reg.host());
    let config = write_config(dir.path(), &yaml);
    let config_arg = config.to_str().unwrap();
    let key = want.key.replace("{HOST}", &reg.host());
    let located = format!("{}:{}:{}: {key}", config.display(), want.line, want.column);

    let mark = reg.log_mark().await;
    for args in [
        vec!["sync", "--once", "--config", config_arg],
        vec!["plan", "--config", config_arg],
        vec!["check", "--connect", "--config", config_arg],
    ] {
        let out = mirrorsync_with_env(&args, &[("DOCKER_CONFIG", dir_str(dir.path()))]).await;
        out.assert_code(2);
        assert!(
            out.stderr.contains(&located),
            "{args:?}: stderr should name `{located}`:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(want.reason),
            "{args:?}: stderr should say `{}`:\n{}",
            want.reason,
            out.stderr
        );
        // One clear error, not a wall of text.
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: one error line expected:\n{}",
            out.stderr
        );
    }
    let log = reg.access_log_since(mark).await;
    assert!(
        log.is_empty(),
        "a config error must stop before any network traffic; the registry saw:\n{}",
        log.dump()
    );
    // Nothing was written at the target either.
    assert!(tags(&reg, "team/app").await == vec!["1.0".to_string()]);
}

fn dir_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_key_is_named_with_its_position() {
    assert_config_error(
        "target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 insecur: true\n\
         images:\n\
         \x20 - {HOST}/team/app:1.0\n",
        Expected {
            line: 3,
            column: 3,
            key: "target.insecur",
            reason: "unknown key",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_type_is_named_with_its_position() {
    assert_config_error(
        "concurrency: 8\n\
         target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 insecure: true\n\
         images:\n\
         \x20 - source: {HOST}/team/app\n\
         \x20   tags: \"1.0\"\n",
        Expected {
            line: 7,
            column: 11,
            key: "images[0].tags",
            reason: "expected a list",
        },
    )
    .await;
    assert_config_error(
        "concurrency: eight\n\
         target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 insecure: true\n\
         images:\n\
         \x20 - {HOST}/team/app:1.0\n",
        Expected {
            line: 1,
            column: 14,
            key: "concurrency",
            reason: "expected a non-negative integer",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upper_case_image_reference_is_rejected() {
    assert_config_error(
        "target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 insecure: true\n\
         images:\n\
         \x20 - {HOST}/team/app:1.0\n\
         \x20 - {HOST}/Team/App:1.0\n",
        Expected {
            line: 6,
            column: 5,
            key: "images[1]",
            reason: "lower case",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sources_mapping_to_the_same_target_tag_are_rejected() {
    // images[1] lands its tag "1.0" at team/app:1.0, where images[0] already lands.
    assert_config_error(
        "target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 insecure: true\n\
         images:\n\
         \x20 - {HOST}/team/app:1.0\n\
         \x20 - source: {HOST}/other/app\n\
         \x20   tags: [\"0.9\", \"1.0\"]\n\
         \x20   target: team/app\n",
        Expected {
            line: 7,
            column: 19,
            key: "images[1].tags[1]",
            reason: "team/app:1.0",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_password_env_var_is_a_config_error() {
    assert_config_error(
        "target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 insecure: true\n\
         \x20 auth:\n\
         \x20   username: robot\n\
         \x20   password_env: MIRRORSYNC_TEST_SURELY_UNSET_PASSWORD\n\
         images:\n\
         \x20 - {HOST}/team/app:1.0\n",
        Expected {
            line: 6,
            column: 19,
            key: "target.auth.password_env",
            reason: "MIRRORSYNC_TEST_SURELY_UNSET_PASSWORD is not set",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_files_are_config_errors() {
    // A CA file that does not exist (relative: resolved from the config's directory).
    assert_config_error(
        "target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 ca_file: certs/missing-ca.pem\n\
         images:\n\
         \x20 - {HOST}/team/app:1.0\n",
        Expected {
            line: 3,
            column: 12,
            key: "target.ca_file",
            reason: "missing-ca.pem",
        },
    )
    .await;
    // An upstream password file that does not exist.
    assert_config_error(
        "target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 insecure: true\n\
         registries:\n\
         \x20 \"{HOST}\":\n\
         \x20   insecure: true\n\
         \x20   auth:\n\
         \x20     username: robot\n\
         \x20     password_file: secrets/absent\n\
         images:\n\
         \x20 - {HOST}/team/app:1.0\n",
        Expected {
            line: 9,
            column: 22,
            key: "registries.{HOST}.auth.password_file",
            reason: "secrets/absent",
        },
    )
    .await;
    // A docker config that does not exist.
    assert_config_error(
        "target:\n\
         \x20 registry: \"{HOST}\"\n\
         \x20 insecure: true\n\
         docker_config: nothere/config.json\n\
         images:\n\
         \x20 - {HOST}/team/app:1.0\n",
        Expected {
            line: 4,
            column: 16,
            key: "docker_config",
            reason: "nothere/config.json",
        },
    )
    .await;
}

/// Runs the binary in `cwd` with `MIRRORSYNC_CONFIG` removed and extra env set.
async fn run_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(bin_path());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("MIRRORSYNC_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("mirrorsync ran longer than 60 s")
        .expect("spawn mirrorsync");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stdout_raw: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_config_file_at_all_is_a_usage_error() {
    // Given an empty working directory, no --config and no $MIRRORSYNC_CONFIG,
    let dir = tempfile::tempdir().unwrap();
    // when I run a pass, then it exits 2 saying which file it looked for and why it failed.
    let out = run_in(dir.path(), &["sync", "--once"], &[]).await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("sync.yaml") && out.stderr.contains("No such file"),
        "should name ./sync.yaml and say it is missing:\n{}",
        out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "no summary expected:\n{}",
        out.stdout
    );
    // $MIRRORSYNC_CONFIG names the file when set.
    let missing = dir.path().join("elsewhere/mirror.yaml");
    let out = run_in(
        dir.path(),
        &["sync", "--once"],
        &[("MIRRORSYNC_CONFIG", dir_str(&missing))],
    )
    .await;
    out.assert_code(2);
    assert!(
        out.stderr.contains(dir_str(&missing)) && out.stderr.contains("No such file"),
        "should name $MIRRORSYNC_CONFIG's file:\n{}",
        out.stderr
    );
    // Nothing was created by a failed start.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_subcommand_or_flag_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    // A valid config, so only the command line can be at fault.
    let config = write_config(
        dir.path(),
        "target:\n  path: ./mirror\nimages:\n  - busybox:1.36\n",
    );
    let config = dir_str(&config);
    for args in [
        vec!["frobnicate"],
        vec!["frobnicate", "--config", config],
        vec!["sync", "--once", "--frobnicate", "--config", config],
        vec!["check", "--no-such-flag", "--config", config],
        vec!["--log-format", "xml", "check", "--config", config],
        vec![],
    ] {
        let out = run_in(dir.path(), &args, &[]).await;
        out.assert_code(2);
        assert!(
            out.stderr.contains("Usage:") || out.stderr.contains("--help"),
            "{args:?}: should point at the usage:\n{}",
            out.stderr
        );
    }
    // The same config is fine with a valid command line (and `check` writes nothing).
    run_in(dir.path(), &["check", "--config", config], &[])
        .await
        .assert_code(0);
    assert!(!dir.path().join("mirror").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_accepts_the_shipped_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("sync.yaml.example");
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        dir.path(),
        &["check", "--config", dir_str(&example)],
        &[("DOCKER_CONFIG", dir_str(dir.path()))],
    )
    .await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("3 tags"),
        "check should count the example's tags:\n{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_file_without_a_certificate_is_a_config_error() {
    // A CA file that exists but holds a private key, not a certificate: were it accepted, the
    // run would trust nothing extra and fail at the first TLS handshake, far from the cause.
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("key-not-ca.pem"), key.serialize_pem()).unwrap();
    let path = dir.path().join("key-not-ca.pem");
    assert_config_error(
        &format!(
            "target:\n\
             \x20 registry: \"{{HOST}}\"\n\
             \x20 ca_file: {}\n\
             images:\n\
             \x20 - {{HOST}}/team/app:1.0\n",
            path.display()
        ),
        Expected {
            line: 3,
            column: 12,
            key: "target.ca_file",
            reason: "holds no PEM certificate",
        },
    )
    .await;
    // An upstream CA file whose certificate section is not valid base64.
    std::fs::write(
        dir.path().join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert_config_error(
        &format!(
            "target:\n\
             \x20 registry: \"{{HOST}}\"\n\
             \x20 insecure: true\n\
             registries:\n\
             \x20 \"{{HOST}}\":\n\
             \x20   ca_file: {}\n\
             images:\n\
             \x20 - {{HOST}}/team/app:1.0\n",
            dir.path().join("broken.pem").display()
        ),
        Expected {
            line: 6,
            column: 14,
            key: "registries.{HOST}.ca_file",
            reason: "is not valid PEM",
        },
    )
    .await;
    // An empty file.
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    assert_config_error(
        &format!(
            "target:\n\
             \x20 registry: \"{{HOST}}\"\n\
             \x20 ca_file: {}\n\
             images:\n\
             \x20 - {{HOST}}/team/app:1.0\n",
            dir.path().join("empty.pem").display()
        ),
        Expected {
            line: 3,
            column: 12,
            key: "target.ca_file",
            reason: "holds no PEM certificate",
        },
    )
    .await;
}
