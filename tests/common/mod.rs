//! Integration-test harness for mirrorsync: real registries, raw-API seeding, independent checks.
//!
//! Every test builds its own world; nothing is shared between tests (they run in parallel):
//!
//! - [`Registry`] runs `/usr/bin/docker-registry serve` (CNCF distribution 2.8) on 127.0.0.1 with
//!   an ephemeral port and a private temp dir (storage, config, logs), plain or TLS
//!   ([`TestCa`]), open, htpasswd (Basic) or token auth ([`TokenServer`], ES256 JWTs with `x5c`).
//!   It is killed and reaped on drop. Its own access log is parsed into [`Access`] entries:
//!   `reg.log_mark().await` before the action, `reg.access_log_since(mark).await` after it, then
//!   count with [`AccessLogExt`] (`manifest_gets`, `manifest_heads`, `blob_gets`, `writes`...).
//!   Reading the log waits until it has been still for 200 ms, as lines land just after responses.
//! - Seeding ([`seed`]) uses raw distribution API calls through the harness's own [`Client`]
//!   (POST/PATCH/PUT uploads, PUT manifests), never the code under test: [`push_blob`],
//!   [`push_big_blob`] (streamed, deterministic), [`push_image`] from an [`ImageSpec`],
//!   [`push_index`] (OCI index or Docker manifest list), [`attestation_manifest`],
//!   [`push_manifest`]. Data is deterministic from seeds ([`layer`]).
//! - Verification ([`verify`]): [`get_manifest`], [`head_manifest`], [`blob_sha256`],
//!   [`blob_size`], [`tags`], [`assert_image_complete`], and skopeo ([`skopeo_inspect_raw`]).
//! - [`OtherRegistry`] runs a second registry implementation, `container-registry` from crates.io
//!   (not distribution, never imitated by a quirk mode), as an independent witness.
//! - A fault-injecting reverse proxy ([`proxy`]): [`Proxy`] in front of a registry, with
//!   [`Rule`]s (drop mid-body, statuses, 429 + Retry-After, stalls, truncation, flipped bytes,
//!   header and body rewrites, redirects, throttling) and a record of every request ([`Seen`]).
//! - The binary under test ([`bin`]): [`mirrorsync`], [`run_measured`] (peak RSS from `wait4`),
//!   [`write_config`].
//!
//! The harness's requests carry User-Agent [`HARNESS_USER_AGENT`], so log entries and token
//! requests from the code under test can be told apart ([`AccessLogExt::not_harness`]).
//! Only 127.0.0.1 is ever contacted.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn example() {
//!     let reg = Registry::start().await;
//!     let img = push_image(&reg, "library/nginx", "1.25", ImageSpec::new(Format::Oci, vec![layer(1, 1024)])).await;
//!     let mark = reg.log_mark().await;
//!     let (_, _, digest) = get_manifest(&reg, "library/nginx", "1.25").await.unwrap();
//!     assert_eq!(digest, img.digest);
//!     assert_eq!(reg.access_log_since(mark).await.manifest_gets(Some("library/nginx")), 1);
//! }
//! ```

pub mod access;
pub mod bin;
pub mod client;
pub mod exposition;
pub mod hostile;
pub mod image;
pub mod observe;
pub mod other_registry;
pub mod proxy;
pub mod quirk;
pub mod registry;
pub mod scenario;
pub mod seed;
pub mod tls;
pub mod token;
pub mod util;
pub mod verify;

pub use access::{Access, AccessLogExt, HARNESS_USER_AGENT};
pub use bin::{
    Output, bin_path, failed_line, json_lines, measure_program, mirrorsync, mirrorsync_with_env,
    run_measured, run_measured_with_env, sigterm, spawn_mirrorsync, sync_once_with_metrics_file,
    wait_output, write_config,
};
pub use client::{Challenge, Client};
pub use image::{
    DOCKER_LIST, DOCKER_MANIFEST, Descriptor, Format, ImageSpec, MANIFEST_ACCEPT, OCI_INDEX,
    OCI_MANIFEST, Platform, PushedImage, docker_image, oci_image,
};
pub use other_registry::{OTHER_PASSWORD, OTHER_USER, OtherRegistry};
pub use proxy::{Action, Proxy, Rule, Seen, SeenExt};
pub use quirk::{Listed, Quirk, tags_page};
pub use registry::{Registry, RegistryOptions};
pub use scenario::{ConfigYaml, Proxied, Scenario, World, slow_world};
pub use seed::{
    MultiArch, attestation_manifest, push_big_blob, push_blob, push_image, push_index,
    push_manifest, push_multi_arch,
};
pub use tls::TestCa;
pub use token::{TokenRequest, TokenServer};
pub use util::{layer, sha256_digest};
pub use verify::{
    assert_image_complete, blob_sha256, blob_size, get_manifest, head_manifest, skopeo,
    skopeo_flags, skopeo_inspect_raw, tags,
};
