//! User story: credentials rotate without anyone telling mirrorsync. A Kubernetes Secret
//! mounted as `password_file` is updated, and the registry takes only the new password: the
//! long-running daemon reads the file again at the start of its next pass (no SIGHUP), and a
//! pass already running reads it again when the registry refuses the old one, without failing
//! the tag. The target is a real htpasswd registry whose password file changes under it;
//! results are read at the registry with the new password.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::observe::{Daemon, poll};
use common::*;
use reqwest::Method;

const USER: &str = "robot";
const FIRST: &str = "first-secret-3141";
const SECOND: &str = "second-secret-2718";

/// A plain upstream and an htpasswd target that takes `USER`/`FIRST`, with the password in a
/// file (the mounted Secret).
async fn rotating_world() -> World {
    let target = Registry::start_with(RegistryOptions {
        htpasswd: Some((USER.into(), FIRST.into())),
        ..Default::default()
    })
    .await;
    let world = World::with(Registry::start().await, target, Proxied::Neither).await;
    std::fs::write(password_file(&world), format!("{FIRST}\n")).expect("password file");
    world
}

fn password_file(world: &World) -> PathBuf {
    world.dir.path().join("target-password")
}

/// `team/app:1` from the upstream into `target` (the registry, or a proxy in front of it)
/// with the password from the file, on `schedule` when given.
fn config(world: &World, target: &str, schedule: Option<&str>) -> PathBuf {
    let schedule = schedule.map_or(String::new(), |s| format!("schedule: \"{s}\"\n"));
    world.write(
        &ConfigYaml::to_registry(target)
            .top(&schedule)
            .target_lines(&format!(
                "  auth: {{ username: {USER}, password_file: \"{}\" }}\n",
                password_file(world).display()
            ))
            .upstream(&world.upstream.host())
            .images(&[world.image("team/app:1")]),
    )
}

/// The registry takes only the new password now, and the mounted file says so.
async fn rotate(world: &mut World) {
    world.target.rotate_htpasswd(SECOND);
    assert_eq!(
        status_with(&world.target, FIRST).await,
        401,
        "the registry still takes the old password: the test would prove nothing"
    );
    assert_eq!(status_with(&world.target, SECOND).await, 200);
    // Replaced whole, as a Kubernetes Secret volume or a secrets agent does: a reader never
    // sees the file empty half way through the write.
    let next = world.dir.path().join("target-password.next");
    std::fs::write(&next, format!("{SECOND}\n")).expect("password file");
    std::fs::rename(&next, password_file(world)).expect("password file");
}

/// `GET /v2/` at `reg` with Basic `USER:password`.
async fn status_with(reg: &Registry, password: &str) -> u16 {
    let client = Client::new(&reg.url(), None, Some((USER.into(), password.into())));
    client
        .send(Method::GET, "/v2/", &[], None)
        .await
        .expect("GET /v2/")
        .status()
        .as_u16()
}

async fn image(reg: &Registry, seed: u64) -> PushedImage {
    push_image(reg, "team/app", "1", oci_image(seed, 4_000 + seed as usize)).await
}

fn no_secret_in(text: &str) {
    for secret in [FIRST, SECOND] {
        assert!(!text.contains(secret), "a password in the output:\n{text}");
    }
}

async fn landed(target: &Registry, digest: &str) -> bool {
    head_manifest(target, "team/app", "1").await.as_deref() == Some(digest)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reads_a_rotated_password_file_at_its_next_pass() {
    let mut world = rotating_world().await;
    let v1 = image(&world.upstream, 1).await;
    let config = config(&world, &world.target.host(), Some("*/1 * * * * *"));
    let daemon = Daemon::start(&config, &["--run-now"]).await;
    let target = &world.target;
    poll(
        Duration::from_secs(60),
        || format!("the first pass never landed team/app:1\n{}", daemon.logs()),
        || async { landed(target, &v1.digest).await.then_some(()) },
    )
    .await;

    rotate(&mut world).await;
    // The tag moves upstream: only a pass that uses the new password can land it.
    let v2 = image(&world.upstream, 2).await;
    let target = &world.target;
    poll(
        Duration::from_secs(60),
        || {
            format!(
                "no pass landed the moved tag with the new password\n{}",
                daemon.logs()
            )
        },
        || async { landed(target, &v2.digest).await.then_some(()) },
    )
    .await;
    assert_image_complete(target, "team/app", "1").await;
    no_secret_in(&daemon.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_rotated_during_a_pass_is_read_again_without_failing_the_tag() {
    let mut world = rotating_world().await;
    let v1 = image(&world.upstream, 7).await;
    let proxy = Proxy::start(&world.target).await;
    // The two uploads (layer and config) wait at the proxy, long enough for the rotation to
    // happen meanwhile (its two checks and the file write, also on a loaded machine); they
    // reach the registry with the old password.
    proxy.add(
        Rule::new(
            "POST /v2/*/blobs/uploads/*",
            Action::Stall(Duration::from_secs(5)),
        )
        .first(2),
    );
    let config = config(&world, &proxy.host(), None);
    let sync = tokio::spawn(async move {
        mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await
    });
    poll(
        Duration::from_secs(30),
        || {
            format!(
                "the two uploads did not reach the proxy:\n{}",
                proxy.seen().dump()
            )
        },
        || async {
            proxy
                .seen()
                .iter()
                .filter(|s| s.method == "POST" && s.kind() == Some("uploads"))
                .count()
                .eq(&2)
                .then_some(())
        },
    )
    .await;
    rotate(&mut world).await;
    let out = sync.await.expect("sync task");
    out.assert_code(0);
    assert!(landed(&world.target, &v1.digest).await);
    assert_image_complete(&world.target, "team/app", "1").await;
    let refused = proxy.seen().iter().filter(|s| s.status == 401).count();
    assert!(
        refused >= 1,
        "the old password was never refused: the rotation came too late to test anything\n{}",
        proxy.seen().dump()
    );
    no_secret_in(&format!("{}{}", out.stdout, out.stderr));
}
