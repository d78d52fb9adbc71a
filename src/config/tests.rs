//! Config tests: each error names the file, line, column and key path; valid files map
//! images to the targets the README documents.

use std::collections::HashMap;
use std::path::Path;

use super::validate;
use super::{Config, ConfigError, TargetKind};

const EXAMPLE: &str = include_str!("../../sync.yaml.example");

fn load_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    validate::from_str(text, Path::new("sync.yaml"), &|name| env.get(name).cloned())
}

fn load(text: &str) -> Result<Config, ConfigError> {
    load_with_env(text, &[])
}

/// The error's one-line Display, which must start with `sync.yaml:L:C: key: `.
fn error(text: &str) -> String {
    let e = load(text).expect_err("config should be rejected");
    e.to_string()
}

const TARGET: &str = "target:\n  path: /tmp/mirror\n";

/// A real self-signed certificate in PEM.
fn test_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec!["ca.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem()
}

#[test]
fn example_file_is_valid_and_needs_no_registry() {
    let c = load(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(c.target.kind, TargetKind::Path(_)));
    assert_eq!(c.images.len(), 3);
    assert_eq!(
        c.schedule.as_ref().map(|s| s.expression()),
        Some("0 */6 * * *")
    );
    let busybox = &c.images[2];
    assert_eq!(busybox.source.to_string(), "docker.io/library/busybox:1.37");
    assert_eq!(busybox.target_repository, "cache/busybox");
    assert_eq!(busybox.platforms.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        c.registry("index.docker.io").bytes_per_second,
        Some(100 << 20)
    );
    assert_eq!(
        c.registry("docker.io").endpoint.host,
        "registry-1.docker.io"
    );
}

#[test]
fn every_optional_key_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let ca = file("ca.pem", &test_ca_pem());
    let token = file("hub-token", "s3cret-token\n");
    let docker_config = file("config.json", "{}");
    let text = format!(
        r#"schedule: "0 0 */6 * * *"
timezone: Europe/Paris
concurrency: 16
target:
  registry: registry.example.internal:5000
  prefix: /mirror/
  insecure: true
  ca_file: {ca}
  auth: {{ username: robot, password_env: TARGET_PASSWORD }}
docker_config: {docker_config}
registries:
  index.docker.io:
    mirrors: ["https://mirror.gcr.io/", "http://localhost:5001/v2-cache"]
    prefix: hub
    auth: {{ username: me, password_file: {token} }}
    insecure: false
    ca_file: {ca}
    requests_per_second: 2.5
    burst: 20
    bytes_per_second: 10MB
    concurrency: 2
    rate_limit_reserve: 10
  quay.io:
    bytes_per_second: 1048576
images:
  - nginx:1.25
  - quay.io/coreos/flannel:v0.11.0-s390x
  - source: redis
    tags: ["7.2", "7.4"]
    platforms: [linux/amd64, linux/arm/v7]
    target: cache/redis
  - alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
"#
    );
    let c = load_with_env(&text, &[("TARGET_PASSWORD", "pw")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.timezone, "Europe/Paris");
    assert_eq!(c.concurrency, 16);
    assert_eq!(c.target.prefix, "mirror");
    let TargetKind::Registry(endpoint) = &c.target.kind else {
        panic!("registry target expected")
    };
    assert_eq!(endpoint.host, "registry.example.internal:5000");
    assert!(endpoint.insecure);
    assert_eq!(endpoint.ca_file.as_deref(), Some(Path::new(&ca)));
    assert_eq!(
        endpoint.credentials.as_ref().map(|c| c.password.expose()),
        Some("pw")
    );
    assert_eq!(c.docker_config.as_deref(), Some(Path::new(&docker_config)));
    let hub = c.registry("docker.io");
    assert_eq!(
        hub.mirrors,
        ["https://mirror.gcr.io", "http://localhost:5001/v2-cache"]
    );
    assert_eq!(
        hub.endpoint
            .credentials
            .as_ref()
            .map(|c| c.password.expose()),
        Some("s3cret-token")
    );
    assert_eq!(hub.requests_per_second, Some(2.5));
    assert_eq!(hub.burst, Some(20));
    assert_eq!(hub.bytes_per_second, Some(10_000_000));
    assert_eq!(hub.concurrency, 2);
    assert_eq!(hub.rate_limit_reserve, Some(10));
    assert_eq!(c.registry("quay.io").bytes_per_second, Some(1 << 20));
    assert_eq!(c.registry("ghcr.io").concurrency, 32);

    let mapped: Vec<(String, String, Option<String>)> = c
        .images
        .iter()
        .map(|i| {
            (
                i.source.to_string(),
                i.target_repository.clone(),
                i.target_tag.clone(),
            )
        })
        .collect();
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let want = [
        (
            "docker.io/library/nginx:1.25",
            "hub/library/nginx",
            Some("1.25"),
        ),
        (
            "quay.io/coreos/flannel:v0.11.0-s390x",
            "mirror/coreos/flannel",
            Some("v0.11.0-s390x"),
        ),
        ("docker.io/library/redis:7.2", "cache/redis", Some("7.2")),
        ("docker.io/library/redis:7.4", "cache/redis", Some("7.4")),
        (
            &format!("docker.io/library/alpine@{digest}"),
            "hub/library/alpine",
            None,
        ),
    ];
    for (got, (source, repo, tag)) in mapped.iter().zip(want) {
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2.as_deref()),
            (source, repo, tag)
        );
    }
    assert_eq!(c.images[3].location, "sync.yaml:29:19 (images[2].tags[1])");
    assert_eq!(c.images[0].location, "sync.yaml:26:5 (images[0])");
    // Secrets stay out of Debug output of the whole config.
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("\"pw\""),
        "{debug}"
    );
}

#[test]
fn defaults_run_wide_except_towards_docker_hub() {
    // Nothing configured: many tags at once, 32 blob transfers per host and 32 writes to the
    // target, but Docker Hub keeps its gentle defaults (4 transfers, 10 requests/s, burst 20),
    // listed or not.
    let c = load(&format!(
        "{TARGET}registries:\n  docker.io:\n    rate_limit_reserve: 5\n  quay.io: {{}}\nimages: [nginx]\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.concurrency, 64);
    assert_eq!(
        c.target.concurrency, 32,
        "as many blob writes as an upstream's transfers"
    );
    for host in ["quay.io", "ghcr.io"] {
        let r = c.registry(host);
        assert_eq!(r.concurrency, 32, "{host}");
        assert_eq!(r.requests_per_second, None, "{host}");
        assert_eq!(r.burst, None, "{host}");
    }
    let unlisted = load(&format!("{TARGET}images: [nginx]\n")).unwrap();
    for hub in [c.registry("docker.io"), unlisted.registry("docker.io")] {
        assert_eq!(hub.concurrency, 4);
        assert_eq!(hub.requests_per_second, Some(10.0));
        assert_eq!(hub.burst, Some(20));
    }
}

#[test]
fn no_prefix_keeps_upstream_paths() {
    let c = load(&format!("{TARGET}images:\n  - nginx:1.25\n  - bob/app\n")).unwrap();
    assert_eq!(c.images[0].target_repository, "library/nginx");
    assert_eq!(c.images[0].target_tag.as_deref(), Some("1.25"));
    assert_eq!(c.images[1].target_repository, "bob/app");
    assert_eq!(c.images[1].target_tag.as_deref(), Some("latest"));
    let c = load("target:\n  path: m\n  prefix: mirror\nimages: [nginx:1.25]\n").unwrap();
    assert_eq!(c.images[0].target_repository, "mirror/library/nginx");
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        error(&format!("{TARGET}images: [nginx]\nimagez: [redis]\n")),
        "sync.yaml:4:1: imagez: unknown key (expected one of schedule, timezone, concurrency, \
         target, targets, docker_config, registries, images, tag_series, spool_dir, spool_size)"
    );
}

#[test]
fn unknown_nested_key() {
    assert_eq!(
        error("target:\n  path: /m\n  regisry: r.example\nimages: [nginx]\n"),
        "sync.yaml:3:3: target.regisry: unknown key (expected one of name, registry, path, prefix, \
         insecure, ca_file, auth, requests_per_second, burst, bytes_per_second, concurrency, \
         chunk_size, digests, since)"
    );
    assert_eq!(
        error(&format!(
            "{TARGET}images:\n  - source: redis\n    tag: [a]\n"
        )),
        "sync.yaml:5:5: images[0].tag: unknown key (expected one of source, tags, platforms, platforms_mode, target, targets, immutable, referrers, backup_tag, prune)"
    );
    assert_eq!(
        error(&format!(
            "{TARGET}registries:\n  quay.io:\n    burts: 3\nimages: [x]\n"
        )),
        "sync.yaml:5:5: registries.quay.io.burts: unknown key (expected one of mirrors, prefix, \
         auth, insecure, ca_file, requests_per_second, burst, bytes_per_second, concurrency, \
         rate_limit_reserve, path)"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        error(&format!("concurrency: many\n{TARGET}images: [nginx]\n")),
        "sync.yaml:1:14: concurrency: expected a non-negative integer"
    );
    assert_eq!(
        error(&format!(
            "{TARGET}images:\n  - source: redis\n    tags: 7.2\n"
        )),
        "sync.yaml:5:11: images[0].tags: expected a list"
    );
    assert_eq!(
        error(&format!(
            "{TARGET}registries:\n  docker.io:\n    insecure: maybe\nimages: [x]\n"
        )),
        "sync.yaml:5:15: registries.docker.io.insecure: expected true or false"
    );
}

#[test]
fn invalid_image_reference() {
    assert_eq!(
        error(&format!(
            "{TARGET}images:\n  - nginx\n  - \"nginx:bad tag\"\n"
        )),
        "sync.yaml:5:5: images[1]: invalid image reference \"nginx:bad tag\": contains whitespace or control characters"
    );
    assert_eq!(
        error(&format!("{TARGET}images:\n  - nginx@sha256:abc\n")),
        "sync.yaml:4:5: images[0]: invalid image reference \"nginx@sha256:abc\": invalid digest \
         \"sha256:abc\": sha256 needs exactly 64 lower-case hex digits"
    );
    assert_eq!(
        error(&format!(
            "{TARGET}images:\n  - source: redis\n    tags: [\"7.2\", \"Bad Tag\"]\n"
        )),
        "sync.yaml:5:19: images[0].tags[1]: invalid tag \"Bad Tag\": only letters, digits, '_', '.' and '-' are allowed"
    );
    assert_eq!(
        error(&format!(
            "{TARGET}images:\n  - source: redis:7\n    tags: [\"7.2\"]\n"
        )),
        "sync.yaml:4:13: images[0].source: \"redis:7\" has a tag or digest; with `tags:` give the repository only"
    );
}

#[test]
fn upper_case_repository() {
    assert_eq!(
        error(&format!("{TARGET}images:\n  - Library/Nginx:1.25\n")),
        "sync.yaml:4:5: images[0]: invalid image reference \"Library/Nginx:1.25\": invalid \
         repository \"Library/Nginx\": repository names must be lower case"
    );
}

#[test]
fn duplicate_targets_and_entries() {
    assert_eq!(
        error(&format!(
            "{TARGET}images:\n  - nginx:1.25\n  - source: bob/nginx\n    tags: [\"1.25\"]\n    target: library/nginx\n"
        )),
        "sync.yaml:6:12: images[1].tags[0]: docker.io/bob/nginx:1.25 and \
         docker.io/library/nginx:1.25 (sync.yaml:4:5 (images[0])) both map to target \
         library/nginx:1.25; set `target:` on one of them"
    );
    assert_eq!(
        error(&format!(
            "{TARGET}images:\n  - nginx\n  - docker.io/library/nginx:latest\n"
        )),
        "sync.yaml:5:5: images[1]: duplicate entry: docker.io/library/nginx:latest is already \
         listed at sync.yaml:4:5 (images[0])"
    );
}

#[test]
fn target_needs_exactly_one_of_registry_and_path() {
    assert_eq!(
        error("target:\n  registry: r.example:5000\n  path: ./m\nimages: [nginx]\n"),
        "sync.yaml:2:3: target: set exactly one of registry or path, not both"
    );
    assert_eq!(
        error("target:\n  prefix: x\nimages: [nginx]\n"),
        "sync.yaml:2:3: target: set exactly one of registry (a registry host) or path (an OCI layout directory)"
    );
    assert_eq!(
        error("images: [nginx]\n"),
        "sync.yaml: target: required key is missing"
    );
}

#[test]
fn missing_password_env_var() {
    let text = "target:\n  registry: r.example\n  auth: {username: robot, password_env: TARGET_PASSWORD}\nimages: [nginx]\n";
    assert_eq!(
        error(text),
        "sync.yaml:3:41: target.auth.password_env: environment variable TARGET_PASSWORD is not set"
    );
    assert!(load_with_env(text, &[("TARGET_PASSWORD", "x")]).is_ok());
    let both = "target:\n  registry: r.example\n  auth: {username: u, password_env: A, password_file: /b}\nimages: [nginx]\n";
    assert_eq!(
        error(both),
        "sync.yaml:3:9: target.auth: set exactly one of password_env or password_file"
    );
}

#[test]
fn bad_bytes_per_second() {
    assert_eq!(
        error(&format!(
            "{TARGET}registries:\n  docker.io:\n    bytes_per_second: 100 MiBs\nimages: [x]\n"
        )),
        "sync.yaml:5:23: registries.docker.io.bytes_per_second: invalid byte size \"100 MiBs\": \
         unknown unit \"MiBs\" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
    );
}

#[test]
fn bad_schedule_field_count() {
    assert_eq!(
        error(&format!("schedule: \"*/5 * * *\"\n{TARGET}images: [x]\n")),
        "sync.yaml:1:11: schedule: schedule \"*/5 * * *\" has 4 fields: expected 5 (minute hour \
         day-of-month month day-of-week) or 6 (second minute hour day-of-month month day-of-week)"
    );
}

#[test]
fn schedule_nicknames_are_parsed_at_load() {
    for (nick, hours) in [("@hourly", 1), ("@daily", 24), ("@weekly", 7 * 24)] {
        let c = load(&format!("schedule: \"{nick}\"\n{TARGET}images: [x]\n"))
            .unwrap_or_else(|e| panic!("{nick}: {e}"));
        let s = c.schedule.expect("schedule");
        assert_eq!(s.expression(), nick);
        let from = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:07:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            s.interval(from),
            Some(std::time::Duration::from_secs(hours * 3600)),
            "{nick}"
        );
    }
}

#[test]
fn more_errors() {
    assert_eq!(
        error(&format!("{TARGET}images: []\n")),
        "sync.yaml:3:9: images: lists no image; add at least one reference such as busybox:1.36"
    );
    assert_eq!(
        error(&format!(
            "{TARGET}registries:\n  docker.io: {{burst: 1}}\n  index.docker.io: {{burst: 2}}\nimages: [x]\n"
        )),
        "sync.yaml:5:20: registries.index.docker.io: docker.io is already configured as \
         registries.docker.io (sync.yaml:4:14 (registries.docker.io))"
    );
    assert_eq!(
        error(&format!("concurrency: 0\n{TARGET}images: [x]\n")),
        "sync.yaml:1:14: concurrency: must be between 1 and 256, not 0"
    );
    assert_eq!(
        error(&format!("{TARGET}images: [x]\nimages: [y]\n")),
        "sync.yaml:4:1: duplicate key `images`"
    );
    let e = load("target: [\n").unwrap_err().to_string();
    assert!(e.starts_with("sync.yaml:"), "{e}");
    let e = Config::load(Path::new("/nonexistent/sync.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cannot read /nonexistent/sync.yaml: "), "{e}");
}

#[test]
fn tag_filters_immutable_and_options() {
    let c = load(&format!(
        r#"{TARGET}images:
  - source: nginx
    tags:
      - "1.25"
      - regex: '^1\.2\d-alpine$'
        exclude: slim
      - semver: ">=1.24 <2"
      - newest: 3
    immutable: ["1.*"]
    referrers: true
    backup_tag: "{{tag}}-prev-{{date}}"
"#
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.images.len(), 1, "the exact tag is a fixed item");
    assert!(c.images[0].options.immutable, "1.25 matches 1.*");
    assert!(c.images[0].options.referrers);
    assert_eq!(c.selections.len(), 1);
    assert_eq!(c.selections[0].filters.len(), 3);
    assert_eq!(c.selections[0].target_repository, "library/nginx");
    assert_eq!(c.selections[0].immutable, vec!["1.*".to_string()]);
}

#[test]
fn bad_tag_filters_are_located() {
    let bad = |tags: &str| {
        error(&format!(
            "{TARGET}images:\n  - source: nginx\n    tags: {tags}\n"
        ))
    };
    assert!(
        bad("[{regex: '('}]").starts_with("sync.yaml:5:12: images[0].tags[0]: invalid regex"),
        "{}",
        bad("[{regex: '('}]")
    );
    assert!(bad("[{semver: banana}]").contains("invalid semver range"));
    assert!(bad("[{newest: 0}]").contains("between 1 and 10000"));
    assert!(bad("[{regex: a, semver: '1'}]").contains("a tag filter is one of"));
    assert!(bad("[{newst: 3}]").contains("unknown key"));
    assert!(bad("[7.4]").contains("quote it"), "{}", bad("[7.4]"));
    let mode = error(&format!(
        "{TARGET}images:\n  - source: nginx\n    platforms_mode: sparse\n"
    ));
    assert!(mode.contains("applies only with platforms"), "{mode}");
    let single = error(&format!(
        "{TARGET}images:\n  - source: nginx\n    platforms: [linux/amd64, linux/arm64]\n    platforms_mode: single\n"
    ));
    assert!(
        single.contains("images[0].platforms_mode") && single.contains("exactly one platform"),
        "{single}"
    );
    let c = load(&format!(
        "{TARGET}images:\n  - source: nginx\n    platforms: [linux/arm64]\n    platforms_mode: single\n"
    ))
    .unwrap();
    assert!(c.images[0].options.single && !c.images[0].options.sparse);
    let backup = error(&format!(
        "{TARGET}images:\n  - source: nginx\n    backup_tag: prev\n"
    ));
    assert!(backup.contains("must contain {tag}"), "{backup}");
}

#[test]
fn target_chunk_size() {
    let c = load("target:\n  registry: r.example\nimages: [nginx]\n").unwrap();
    assert_eq!(c.target.chunk_size, 64 * 1024 * 1024, "default");
    let c = load("target:\n  registry: r.example\n  chunk_size: 8MiB\nimages: [nginx]\n").unwrap();
    assert_eq!(c.target.chunk_size, 8 * 1024 * 1024);
    assert_eq!(
        error("target:\n  registry: r.example\n  chunk_size: 1MiB\nimages: [nginx]\n"),
        "sync.yaml:3:15: target.chunk_size: must be between 5MiB (the smallest part ECR accepts) and 1GiB"
    );
    assert!(
        error("target:\n  registry: r.example\n  chunk_size: lots\nimages: [nginx]\n")
            .contains("target.chunk_size: invalid byte size")
    );
    assert!(
        error("target:\n  path: /m\n  chunk_size: 8MiB\nimages: [nginx]\n")
            .contains("target.chunk_size: applies only to a registry target")
    );
}

const TWO_TARGETS: &str = "targets:\n  - name: eu\n    registry: eu.example:5000\n    prefix: m\n  - name: carry\n    path: /tmp/carry\n";

#[test]
fn targets_each_get_their_own_items_mapped_with_their_prefix() {
    let text = format!(
        "{TWO_TARGETS}images:\n  - nginx:1.25\n  - source: redis\n    tags: [\"7\"]\n    targets: [carry]\n"
    );
    let config = load(&text).unwrap();
    let views = config.per_target();
    assert_eq!(views.len(), 2);
    assert_eq!(views[0].target.name.as_deref(), Some("eu"));
    let eu: Vec<String> = views[0]
        .images
        .iter()
        .map(|i| i.target_repository.clone())
        .collect();
    assert_eq!(eu, ["m/library/nginx"]);
    let carry: Vec<String> = views[1]
        .images
        .iter()
        .map(|i| i.target_repository.clone())
        .collect();
    assert_eq!(carry, ["library/nginx", "library/redis"]);
    assert!(config.named_targets());
    // `target:` is one unnamed target.
    let single = load(&format!("{TARGET}images:\n  - nginx:1.25\n")).unwrap();
    assert_eq!(single.per_target().len(), 1);
    assert!(!single.named_targets());
}

#[test]
fn target_list_errors_name_the_key() {
    let e = error(&format!(
        "{TARGET}targets:\n  - name: a\n    path: /x\nimages: [nginx]\n"
    ));
    assert!(e.contains("targets: set either target"), "{e}");
    let e = error("targets:\n  - registry: r.example\nimages: [nginx]\n");
    assert!(
        e.contains("targets[0].name: every element of targets needs a name"),
        "{e}"
    );
    let e =
        error("targets:\n  - name: a\n    path: /x\n  - name: a\n    path: /y\nimages: [nginx]\n");
    assert!(
        e.contains("targets[1].name:") && e.contains("already the name"),
        "{e}"
    );
    let e = error("targets:\n  - name: \"a b\"\n    path: /x\nimages: [nginx]\n");
    assert!(e.contains("targets[0].name:"), "{e}");
    let e = error(&format!(
        "{TWO_TARGETS}images:\n  - source: nginx\n    tags: [\"1\"]\n    targets: [us]\n"
    ));
    assert!(
        e.starts_with("sync.yaml:10:")
            && e.contains("images[0].targets[0]: \"us\" is not a target name (targets: eu, carry)"),
        "{e}"
    );
    let e = error(&format!(
        "{TARGET}images:\n  - source: nginx\n    tags: [\"1\"]\n    targets: [eu]\n"
    ));
    assert!(
        e.contains("images[0].targets: names targets, but the config has a single"),
        "{e}"
    );
    let e = error("targets:\n  - name: a\n    path: /x\n    chunk_size: 8MiB\nimages: [nginx]\n");
    assert!(
        e.contains("targets[0].chunk_size: applies only to a registry target"),
        "{e}"
    );
    let e = error(&format!("{TWO_TARGETS}spool_size: 0\nimages: [nginx]\n"));
    assert!(e.contains("spool_size: must be above 0"), "{e}");
}
