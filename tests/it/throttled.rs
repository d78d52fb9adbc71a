//! User story: a registry that caps the request rate (ECR's TPS quotas, GHCR, Harbor under load,
//! Docker Hub's abuse limiter) answers 429 above the cap, and mirrorsync, with default settings,
//! slows down to what it allows: every tag lands, and the 429s stay a small share of the
//! requests that got through; on the upstream side and on the target side, with and without
//! `Retry-After`. The cap is the fault proxy's `Quirk::RateLimited` in front of a real
//! registry; the counts are the proxy's own record, the results are read at the registry
//! behind it. `--nocapture` prints the figures.

use crate::common;

use std::path::PathBuf;

use common::*;
use tempfile::TempDir;

/// Requests per second the imitated registry allows, and its burst.
const CAP: f64 = 25.0;
const BURST: u32 = 25;
/// The largest share of 429s (of the requests let through) a run may cause.
const MAX_REFUSED_SHARE: f64 = 0.10;

/// Which side is throttled.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Upstream,
    Target,
}

struct World {
    upstream: Registry,
    target: Registry,
    proxy: Proxy,
    side: Side,
    dir: TempDir,
    images: Vec<(String, String, String)>,
}

impl World {
    /// `repos` repositories of `tags` tags each, every tag its own small image, and the proxy
    /// capping the rate in front of `side`.
    async fn new(side: Side, repos: u64, tags: u64, retry_after: bool) -> World {
        let upstream = Registry::start().await;
        let target = Registry::start().await;
        let proxy = Proxy::start(match side {
            Side::Upstream => &upstream,
            Side::Target => &target,
        })
        .await;
        let mut images = Vec::new();
        for r in 0..repos {
            let repo = format!("capped/app{r}");
            for t in 0..tags {
                let seed = 1000 + r * 100 + t;
                let spec = ImageSpec::new(Format::Oci, vec![layer(seed, 3_000 + seed as usize)]);
                let tag = format!("v{t}");
                let img = push_image(&upstream, &repo, tag.as_str(), spec).await;
                images.push((repo.clone(), tag, img.digest));
            }
        }
        Quirk::RateLimited {
            per_second: CAP,
            burst: BURST,
            retry_after,
        }
        .install(&proxy);
        World {
            upstream,
            target,
            proxy,
            side,
            dir: tempfile::tempdir().expect("tempdir"),
            images,
        }
    }

    /// Default settings; only the hosts.
    fn config(&self) -> PathBuf {
        let (source, target) = match self.side {
            Side::Upstream => (self.proxy.host(), self.target.host()),
            Side::Target => (self.upstream.host(), self.proxy.host()),
        };
        let mut yaml = format!(
            "target:\n  registry: \"{target}\"\n  insecure: true\n\
             registries:\n  \"{source}\":\n    insecure: true\nimages:\n"
        );
        for (repo, tag, _) in &self.images {
            yaml.push_str(&format!("  - {source}/{repo}:{tag}\n"));
        }
        write_config(self.dir.path(), &yaml)
    }

    /// Syncs once; returns the metrics file's text.
    async fn sync(&self) -> String {
        let config = self.config();
        let metrics = self.dir.path().join("mirrorsync.prom");
        let out = sync_once_with_metrics_file(&config, &metrics).await;
        out.assert_code(0);
        std::fs::read_to_string(&metrics).expect("metrics file")
    }

    /// Every tag at the target registry itself (not through the proxy), with its upstream digest.
    async fn assert_every_tag_landed(&self) {
        for (repo, tag, digest) in &self.images {
            let walked = assert_image_complete(&self.target, repo, tag).await;
            let _ = walked;
            assert_eq!(
                head_manifest(&self.target, repo, tag).await.as_deref(),
                Some(digest.as_str()),
                "{repo}:{tag}"
            );
        }
    }

    /// (let through, refused with 429) as the proxy counted them.
    fn counts(&self) -> (usize, usize) {
        let seen = self.proxy.seen();
        let refused = seen.iter().filter(|s| s.action == "rate-cap").count();
        (seen.len() - refused, refused)
    }
}

/// Syncs through the cap and checks every tag landed and the 429s stayed a small share.
async fn sync_under_the_cap(side: Side, retry_after: bool) {
    let world = World::new(side, 6, 4, retry_after).await;
    let metrics = world.sync().await;
    world.assert_every_tag_landed().await;
    let (through, refused) = world.counts();
    let share = refused as f64 / through as f64;
    eprintln!(
        "{} throttled at {CAP}/s (burst {BURST}, Retry-After {retry_after}): {through} requests let through, {refused} answered 429 ({:.1}%)",
        if side == Side::Upstream {
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
        world.proxy.seen().dump()
    );
    // The window and the pace learned from the refusals are on show.
    let label = if side == Side::Upstream {
        world.proxy.host()
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
    sync_under_the_cap(Side::Upstream, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_target_gets_every_tag_and_few_429s() {
    sync_under_the_cap(Side::Target, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_from_a_throttled_target_is_honoured_for_the_whole_host() {
    sync_under_the_cap(Side::Target, true).await;
}
