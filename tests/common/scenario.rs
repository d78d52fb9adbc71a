//! Set-ups shared by the test files: a config written through code ([`ConfigYaml`]), a world of
//! registries with fault proxies on either side ([`World`]), and the common one-upstream,
//! one-target case ([`Scenario`]).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use std::time::Duration;

use super::bin::{Output, mirrorsync, write_config};
use super::image::{PushedImage, oci_image};
use super::proxy::{Action, Proxy, Rule};
use super::registry::Registry;
use super::seed::push_image;

/// A `sync.yaml` built in code: top-level lines, the `target:` block, the upstream registries
/// (each `insecure: true`, plus its own lines) and the image list items, written in that order.
#[derive(Clone, Debug, Default)]
pub struct ConfigYaml {
    top: String,
    target: String,
    registries: Vec<(String, String)>,
    images: Vec<String>,
}

impl ConfigYaml {
    /// `target.registry` = `host` over plain HTTP (`insecure: true`).
    pub fn to_registry(host: &str) -> ConfigYaml {
        ConfigYaml {
            target: format!("target:\n  registry: \"{host}\"\n  insecure: true\n"),
            ..Default::default()
        }
    }

    /// A `target:` block of the given lines (each indented by two spaces).
    pub fn with_target(lines: &str) -> ConfigYaml {
        ConfigYaml {
            target: format!("target:\n{lines}"),
            ..Default::default()
        }
    }

    /// `target.registry` = `host` over TLS, trusting the CA in `ca_file`.
    pub fn to_tls_registry(host: &str, ca_file: &Path) -> ConfigYaml {
        ConfigYaml {
            target: format!(
                "target:\n  registry: \"{host}\"\n  ca_file: \"{}\"\n",
                ca_file.display()
            ),
            ..Default::default()
        }
    }

    /// `target.path` = `layout` (an OCI layout directory).
    pub fn to_layout(layout: &Path) -> ConfigYaml {
        ConfigYaml {
            target: format!("target:\n  path: \"{}\"\n", layout.display()),
            ..Default::default()
        }
    }

    /// Top-level YAML lines (before `target:`), e.g. `"concurrency: 1\n"`.
    pub fn top(mut self, lines: &str) -> Self {
        self.top.push_str(lines);
        self
    }

    /// Lines under `target:`, each indented by two spaces.
    pub fn target_lines(mut self, lines: &str) -> Self {
        self.target.push_str(lines);
        self
    }

    /// `registries.<host>` with `insecure: true`.
    pub fn upstream(mut self, host: &str) -> Self {
        self.registries.push((host.to_string(), String::new()));
        self
    }

    /// Lines under the last added `registries.<host>`, each indented by four spaces.
    pub fn upstream_lines(mut self, lines: &str) -> Self {
        let (_, extra) = self
            .registries
            .last_mut()
            .expect("upstream_lines needs an upstream");
        extra.push_str(lines);
        self
    }

    /// Image list items, each written verbatim after `- `.
    pub fn images<S: AsRef<str>>(mut self, items: &[S]) -> Self {
        self.images
            .extend(items.iter().map(|i| i.as_ref().to_string()));
        self
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        let mut yaml = format!("{}{}", self.top, self.target);
        if !self.registries.is_empty() {
            yaml.push_str("registries:\n");
        }
        for (host, extra) in &self.registries {
            yaml.push_str(&format!("  \"{host}\":\n    insecure: true\n{extra}"));
        }
        yaml.push_str("images:\n");
        for image in &self.images {
            yaml.push_str(&format!("  - {image}\n"));
        }
        yaml
    }

    /// Writes `dir/sync.yaml`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write_config(dir, &self.yaml())
    }
}

/// Which sides of a [`World`] have a fault proxy in front of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxied {
    /// mirrorsync reads the upstream through a proxy; the target directly.
    Upstream,
    /// mirrorsync writes the target through a proxy; the upstream directly.
    Target,
    /// Both.
    Both,
    /// Neither.
    Neither,
}

/// An upstream registry, a target registry, fault proxies on the sides asked for, and a temp dir
/// for configs. mirrorsync sees the proxies' hosts where there are proxies.
pub struct World {
    pub upstream: Registry,
    pub target: Registry,
    up: Option<Proxy>,
    down: Option<Proxy>,
    pub dir: TempDir,
}

impl World {
    /// Two fresh plain registries.
    pub async fn start(proxied: Proxied) -> World {
        World::with(Registry::start().await, Registry::start().await, proxied).await
    }

    /// Around the given registries.
    pub async fn with(upstream: Registry, target: Registry, proxied: Proxied) -> World {
        let up = matches!(proxied, Proxied::Upstream | Proxied::Both);
        let down = matches!(proxied, Proxied::Target | Proxied::Both);
        let up = if up {
            Some(Proxy::start(&upstream).await)
        } else {
            None
        };
        let down = if down {
            Some(Proxy::start(&target).await)
        } else {
            None
        };
        World {
            upstream,
            target,
            up,
            down,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The proxy in front of the upstream.
    pub fn up(&self) -> &Proxy {
        self.up.as_ref().expect("this world has no upstream proxy")
    }

    /// The proxy in front of the target.
    pub fn down(&self) -> &Proxy {
        self.down.as_ref().expect("this world has no target proxy")
    }

    /// The upstream host as mirrorsync sees it.
    pub fn source_host(&self) -> String {
        self.up
            .as_ref()
            .map_or_else(|| self.upstream.host(), Proxy::host)
    }

    /// The target host as mirrorsync sees it.
    pub fn target_host(&self) -> String {
        self.down
            .as_ref()
            .map_or_else(|| self.target.host(), Proxy::host)
    }

    /// `repo:tag` at the upstream, as an image source.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.source_host())
    }

    /// A config from the upstream into the target (same paths) of `images` (`repo:tag`).
    pub fn config<S: AsRef<str>>(&self, images: &[S]) -> ConfigYaml {
        let items: Vec<String> = images.iter().map(|i| self.image(i.as_ref())).collect();
        self.config_items(&items)
    }

    /// Like [`World::config`] with image list items written verbatim.
    pub fn config_items<S: AsRef<str>>(&self, items: &[S]) -> ConfigYaml {
        ConfigYaml::to_registry(&self.target_host())
            .upstream(&self.source_host())
            .images(items)
    }

    /// Writes `config` into this world's dir; returns its path.
    pub fn write(&self, config: &ConfigYaml) -> PathBuf {
        config.write(self.dir.path())
    }

    /// `mirrorsync sync --once --config <config>`.
    pub async fn sync(&self, config: &Path) -> Output {
        mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await
    }
}

/// A run that takes seconds a tag, as [`slow_world`] set it up.
pub struct SlowWorld {
    pub world: World,
    /// The config: one tag at a time, 20 MiB/s from the upstream.
    pub config: PathBuf,
    /// `slow/big:v1`.
    pub big: PushedImage,
}

/// An upstream (behind its proxy) with a big tag first (`slow/big:v1`, a `big`-byte layer) and
/// four small ones after (`slow/small0..3:v1`), read at 20 MiB/s, one tag at a time; each small
/// tag's manifest GET stalls 3 s. Every tag takes seconds: whichever tag the engine starts
/// first, it is still in flight one second in, and the others have not started.
pub async fn slow_world(big: u64) -> SlowWorld {
    let world = World::start(Proxied::Upstream).await;
    let big = push_image(
        &world.upstream,
        "slow/big",
        "v1",
        oci_image(50, 1000).big_layer(big, 51),
    )
    .await;
    let mut images = vec!["slow/big:v1".to_string()];
    for i in 0..4u64 {
        let repo = format!("slow/small{i}");
        push_image(&world.upstream, &repo, "v1", oci_image(60 + i, 20_000)).await;
        images.push(format!("{repo}:v1"));
    }
    world.up().add(Rule::new(
        "GET /v2/slow/small*/manifests/*",
        Action::Stall(Duration::from_secs(3)),
    ));
    let config = world.write(
        &world
            .config(&images)
            .top("concurrency: 1\n")
            .upstream_lines("    bytes_per_second: 20MiB\n"),
    );
    SlowWorld { world, config, big }
}

/// A config file in its own temp dir (kept alive as long as the value).
pub struct Scenario {
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Scenario {
    /// `target.registry` = `target` (plain HTTP), upstream plain HTTP, `images` as YAML list
    /// items (each a string written verbatim after `- `), with an optional target prefix.
    pub fn registry_to_registry(
        upstream: &Registry,
        target: &Registry,
        prefix: &str,
        images: &[String],
    ) -> Scenario {
        let yaml = ConfigYaml::to_registry(&target.host())
            .target_lines(&format!("  prefix: \"{prefix}\"\n"))
            .upstream(&upstream.host())
            .images(images);
        Self::write(&yaml)
    }

    /// Like [`Scenario::registry_to_registry`] but into an OCI layout directory `layout`.
    pub fn registry_to_layout(upstream: &Registry, layout: &Path, images: &[String]) -> Scenario {
        let yaml = ConfigYaml::to_layout(layout)
            .upstream(&upstream.host())
            .images(images);
        Self::write(&yaml)
    }

    /// `yaml` in a fresh temp dir.
    pub fn write(yaml: &ConfigYaml) -> Scenario {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = yaml.write(dir.path());
        Scenario { dir, config }
    }

    /// The config path as a string argument.
    pub fn config_arg(&self) -> String {
        self.config.display().to_string()
    }

    /// `mirrorsync sync --once --config <this>`.
    pub async fn sync(&self) -> Output {
        mirrorsync(&["sync", "--once", "--config", &self.config_arg()]).await
    }

    /// `mirrorsync <flags> sync --once --config <this>` (`flags`: global ones, e.g. logging).
    pub async fn sync_with_flags(&self, flags: &[&str]) -> Output {
        let config = self.config_arg();
        let mut args = flags.to_vec();
        args.extend(["sync", "--once", "--config", &config]);
        mirrorsync(&args).await
    }

    /// `mirrorsync plan --config <this>`.
    pub async fn plan(&self) -> Output {
        mirrorsync(&["plan", "--config", &self.config_arg()]).await
    }
}
