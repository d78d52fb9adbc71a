//! Small builders for the common case: one plain upstream, one plain target, a few images.

use std::path::PathBuf;

use tempfile::TempDir;

use super::registry::Registry;

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
        let target_yaml = format!(
            "target:\n  registry: \"{}\"\n  insecure: true\n  prefix: \"{prefix}\"\n",
            target.host()
        );
        Self::with_target(upstream, &target_yaml, images)
    }

    /// Like [`Scenario::registry_to_registry`] but into an OCI layout directory `layout`.
    pub fn registry_to_layout(
        upstream: &Registry,
        layout: &std::path::Path,
        images: &[String],
    ) -> Scenario {
        let target_yaml = format!("target:\n  path: \"{}\"\n", layout.display());
        Self::with_target(upstream, &target_yaml, images)
    }

    fn with_target(upstream: &Registry, target_yaml: &str, images: &[String]) -> Scenario {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut yaml = String::from(target_yaml);
        yaml.push_str(&format!(
            "registries:\n  \"{}\":\n    insecure: true\nimages:\n",
            upstream.host()
        ));
        for image in images {
            yaml.push_str(&format!("  - {image}\n"));
        }
        let config = super::bin::write_config(dir.path(), &yaml);
        Scenario { dir, config }
    }

    /// The config path as a string argument.
    pub fn config_arg(&self) -> String {
        self.config.display().to_string()
    }

    /// `mirrorsync sync --once --config <this>`.
    pub async fn sync(&self) -> super::bin::Output {
        super::bin::mirrorsync(&["sync", "--once", "--config", &self.config_arg()]).await
    }

    /// `mirrorsync plan --config <this>`.
    pub async fn plan(&self) -> super::bin::Output {
        super::bin::mirrorsync(&["plan", "--config", &self.config_arg()]).await
    }
}
