//! User story: a registry that caps the request rate (ECR's TPS quotas, GHCR, Harbor under load,
//! Docker Hub's abuse limiter) answers 429 above the cap, and mirrorsync, with default settings,
//! slows down to what it allows: every tag lands, and the 429s stay a small share of the
//! requests that got through; on the upstream side and on the target side, with and without
//! `Retry-After`. The cap is the fault proxy's `Quirk::RateLimited` in front of a real
//! registry; the counts are the proxy's own record, the results are read at the registry
//! behind it. `--nocapture` prints the figures.

use crate::common;

use common::*;

/// Requests per second the imitated registry allows, and its burst.
const CAP: f64 = 25.0;
const BURST: u32 = 25;
/// The largest share of 429s (of the requests let through) a run may cause.
const MAX_REFUSED_SHARE: f64 = 0.10;

/// `repos` repositories of `tags` tags each at the upstream, every tag its own small image;
/// returns (repo, tag, digest) of each.
async fn seed(world: &World, repos: u64, tags: u64) -> Vec<(String, String, String)> {
    let mut images = Vec::new();
    for r in 0..repos {
        let repo = format!("capped/app{r}");
        for t in 0..tags {
            let seed = 1000 + r * 100 + t;
            let spec = oci_image(seed, 3_000 + seed as usize);
            let tag = format!("v{t}");
            let img = push_image(&world.upstream, &repo, tag.as_str(), spec).await;
            images.push((repo.clone(), tag, img.digest));
        }
    }
    images
}

/// The proxy that caps the rate: in front of the upstream or of the target.
fn capped(world: &World, side: Proxied) -> &Proxy {
    if side == Proxied::Upstream {
        world.up()
    } else {
        world.down()
    }
}

/// Every tag at the target registry itself (not through the proxy), with its upstream digest.
async fn assert_every_tag_landed(world: &World, images: &[(String, String, String)]) {
    for (repo, tag, digest) in images {
        assert_image_complete(&world.target, repo, tag).await;
        assert_eq!(
            head_manifest(&world.target, repo, tag).await.as_deref(),
            Some(digest.as_str()),
            "{repo}:{tag}"
        );
    }
}

/// (let through, refused with 429) as the proxy counted them.
fn counts(proxy: &Proxy) -> (usize, usize) {
    let seen = proxy.seen();
    let refused = seen.iter().filter(|s| s.action == "rate-cap").count();
    (seen.len() - refused, refused)
}

/// Syncs through the cap and checks every tag landed and the 429s stayed a small share.
async fn sync_under_the_cap(side: Proxied, retry_after: bool) {
    let world = World::start(side).await;
    let images = seed(&world, 6, 4).await;
    let proxy = capped(&world, side);
    Quirk::RateLimited {
        per_second: CAP,
        burst: BURST,
        retry_after,
    }
    .install(proxy);
    // Default settings; only the hosts.
    let items: Vec<String> = images.iter().map(|(r, t, _)| format!("{r}:{t}")).collect();
    let config = world.write(&world.config(&items));
    let metrics_file = world.dir.path().join("mirrorsync.prom");
    sync_once_with_metrics_file(&config, &metrics_file)
        .await
        .assert_code(0);
    let metrics = std::fs::read_to_string(&metrics_file).expect("metrics file");
    assert_every_tag_landed(&world, &images).await;
    let (through, refused) = counts(proxy);
    let share = refused as f64 / through as f64;
    eprintln!(
        "{} throttled at {CAP}/s (burst {BURST}, Retry-After {retry_after}): {through} requests let through, {refused} answered 429 ({:.1}%)",
        if side == Proxied::Upstream {
            "upstream"
        } else {
            "target"
        },
        share * 100.0
    );
    assert!(
        through >= 24 * 3,
        "too few requests for a test of pace: {through}"
    );
    assert!(
        share < MAX_REFUSED_SHARE,
        "{refused} answers of 429 for {through} requests let through:\n{}",
        proxy.seen().dump()
    );
    // The window and the pace learned from the refusals are on show.
    let label = if side == Proxied::Upstream {
        proxy.host()
    } else {
        "target".to_string()
    };
    let window = metric_value(&metrics, "mirrorsync_request_window", &label);
    assert!(window.is_some_and(|w| w >= 1.0), "{metrics}");
    if refused > 0 {
        let pace = metric_value(&metrics, "mirrorsync_request_pace_per_second", &label);
        assert!(pace.is_some_and(|p| p >= 1.0), "{metrics}");
    }
}

/// The value of `name{registry="<registry>"}` in a text exposition.
fn metric_value(text: &str, name: &str, registry: &str) -> Option<f64> {
    let prefix = format!("{name}{{registry=\"{registry}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_upstream_is_followed_at_its_pace() {
    sync_under_the_cap(Proxied::Upstream, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_target_gets_every_tag_and_few_429s() {
    sync_under_the_cap(Proxied::Target, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_from_a_throttled_target_is_honoured_for_the_whole_host() {
    sync_under_the_cap(Proxied::Target, true).await;
}
