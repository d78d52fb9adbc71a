//! Where a run finds the tags' history (when each was last confirmed in sync, when the last
//! fully successful run ended) when the state document ([`crate::state`]) cannot be read,
//! typically because the target registry that holds it is down.
//!
//! Without it every tag would look new and its lag would start over at 0 exactly when the
//! mirror is going stale. Each way of exporting metrics has its own memory of the last values:
//! the daemon keeps the state of its last run in memory; a `--once` run reads its previous
//! `--metrics-file`, or its own group on the Pushgateway (the previous run's push). When none
//! of these is there (the first run ever, or the Pushgateway down as well), the history is
//! unknown and lag starts from this run, which is logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::state::{State, TagState};

/// The state of the daemon's last run per target (`""` for an unnamed one), shared between
/// runs.
pub type Memory = Arc<Mutex<BTreeMap<String, State>>>;

/// The fallbacks of one run.
#[derive(Clone, Default)]
pub struct StateFallback {
    /// The daemon: the state after its last run.
    pub memory: Option<Memory>,
    /// `--metrics-file`: the previous run's textfile.
    pub textfile: Option<PathBuf>,
    /// `--pushgateway`: this run's group there, as pushed by the previous run.
    pub pushgateway: Option<PushgatewayGroup>,
    /// With several targets: whose history this is (series with this `target_name`).
    pub target_name: Option<String>,
}

/// A Pushgateway and the grouping labels of this run's metrics.
#[derive(Clone, Debug)]
pub struct PushgatewayGroup {
    pub url: String,
    /// `job` and the grouping labels, e.g. `[("job", "mirrorsync"), ("instance", "mirror")]`.
    pub labels: Vec<(String, String)>,
}

const LAST_SYNCED: &str = "mirrorsync_tag_last_synced_timestamp_seconds";
const LAST_SUCCESS: &str = "mirrorsync_run_last_success_timestamp_seconds";

impl StateFallback {
    /// The history from the first fallback that has one, and where it came from.
    pub async fn recover(&self) -> Option<(State, &'static str)> {
        if let Some(state) = self.remembered() {
            return Some((state, "the previous pass in this process"));
        }
        if let Some(path) = &self.textfile
            && let Ok(text) = tokio::fs::read_to_string(path).await
        {
            let samples = self.own(parse_exposition(&text));
            if !samples.is_empty() {
                return Some((from_samples(&samples), "the previous metrics textfile"));
            }
        }
        if let Some(group) = &self.pushgateway {
            match fetch_group(group).await.map(|s| self.own(s)) {
                Ok(samples) if !samples.is_empty() => {
                    return Some((
                        from_samples(&samples),
                        "the previous run's Pushgateway group",
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the previous run's metrics from the Pushgateway")
                }
            }
        }
        None
    }

    /// The history of one target of a run over several.
    pub fn for_target(&self, name: Option<&str>) -> StateFallback {
        StateFallback {
            target_name: name.map(str::to_string),
            ..self.clone()
        }
    }

    fn key(&self) -> String {
        self.target_name.clone().unwrap_or_default()
    }

    /// The samples of this history's target.
    fn own(&self, mut samples: Vec<Sample>) -> Vec<Sample> {
        samples.retain(|(_, labels, _)| {
            labels.get("target_name").map(String::as_str) == self.target_name.as_deref()
        });
        samples
    }

    fn remembered(&self) -> Option<State> {
        let memory = self.memory.as_ref()?;
        memory.lock().ok()?.get(&self.key()).cloned()
    }

    /// Keeps the state of a finished run for the next one (daemon only).
    pub fn remember(&self, state: &State) {
        if let Some(memory) = &self.memory
            && let Ok(mut m) = memory.lock()
        {
            m.insert(self.key(), state.clone());
        }
    }

    /// Folds the in-memory history into a state read from the target: the later confirmation
    /// wins (the target's copy is older when saving it failed during an outage).
    pub fn merge_into(&self, state: &mut State) {
        let Some(known) = self.remembered() else {
            return;
        };
        for (key, remembered) in known.tags {
            let entry = state.tags.entry(key).or_default();
            if remembered.last_synced > entry.last_synced {
                entry.last_synced = remembered.last_synced;
            }
            if entry.pending_since.is_none() && entry.last_synced.is_none() {
                entry.pending_since = remembered.pending_since;
            }
        }
        if known.last_success > state.last_success {
            state.last_success = known.last_success;
        }
    }
}

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A state holding what metrics say: per tag its last confirmation, and the last success.
fn from_samples(samples: &[Sample]) -> State {
    let mut state = State::default();
    for (name, labels, value) in samples {
        if !value.is_finite() {
            continue;
        }
        if name == LAST_SYNCED
            && let (Some(source), Some(target)) = (labels.get("source"), labels.get("target"))
        {
            state.tags.insert(
                format!("{source} -> {target}"),
                TagState {
                    last_synced: Some(*value),
                    pending_since: None,
                },
            );
        } else if name == LAST_SUCCESS {
            state.last_success = Some(*value);
        }
    }
    state
}

/// Why the previous run's group could not be read from the Pushgateway. Never holds the
/// URL's user information.
#[derive(Debug, thiserror::Error)]
enum PushgatewayReadError {
    #[error("the Pushgateway URL is not a valid URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("GET {url}: {error}")]
    Request { url: String, error: reqwest::Error },
    #[error("GET {url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
}

/// `GET /api/v1/metrics` of the Pushgateway, the samples of the group with exactly these
/// grouping labels.
async fn fetch_group(group: &PushgatewayGroup) -> Result<Vec<Sample>, PushgatewayReadError> {
    let (url, credentials) = without_credentials(&group.url)?;
    let url = format!("{}/api/v1/metrics", url.as_str().trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10));
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, password);
    }
    let response = request
        .send()
        .await
        .map_err(|e| PushgatewayReadError::Request {
            url: url.clone(),
            error: e.without_url(),
        })?;
    if !response.status().is_success() {
        return Err(PushgatewayReadError::Status {
            url,
            status: response.status(),
        });
    }
    let body: serde_json::Value =
        response
            .json()
            .await
            .map_err(|error| PushgatewayReadError::Request {
                url: url.clone(),
                error,
            })?;
    let want: BTreeMap<&str, &str> = group
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut samples = Vec::new();
    for g in body["data"].as_array().into_iter().flatten() {
        let labels: BTreeMap<&str, &str> = g["labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                    .collect()
            })
            .unwrap_or_default();
        if labels != want {
            continue;
        }
        for name in [LAST_SYNCED, LAST_SUCCESS] {
            for m in g[name]["metrics"].as_array().into_iter().flatten() {
                let value = m["value"].as_str().and_then(|v| v.parse::<f64>().ok());
                let labels = m["labels"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(value) = value {
                    samples.push((name.to_string(), labels, value));
                }
            }
        }
    }
    Ok(samples)
}

/// A user name and an optional password.
type BasicAuth = (String, Option<String>);

/// The Pushgateway URL with its `user:password@` taken out (for the request's Basic
/// authentication), so neither appears in a message.
fn without_credentials(raw: &str) -> Result<(url::Url, Option<BasicAuth>), url::ParseError> {
    let mut url = url::Url::parse(raw.trim())?;
    if url.username().is_empty() && url.password().is_none() {
        return Ok((url, None));
    }
    let user = percent_decode(url.username());
    let password = url.password().map(percent_decode);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok((url, Some((user, password))))
}

/// Decodes `%XX` escapes (user information in a URL is percent-encoded).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The samples of a Prometheus text exposition (comments and malformed lines skipped).
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &body[chars.next().map_or(body.len(), |(i, _)| i)..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name.to_string(), labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pushgateway_password_is_never_in_the_error() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Port 1 on loopback: refused at once.
        let group = PushgatewayGroup {
            url: "http://me:s3cr%40t@127.0.0.1:1/".into(),
            labels: Vec::new(),
        };
        let error = fetch_group(&group).await.unwrap_err().to_string();
        assert!(error.contains("127.0.0.1:1"), "{error}");
        assert!(!error.contains("s3cr") && !error.contains("me:"), "{error}");
        assert_eq!(
            without_credentials("https://me:s3cr%40t@pg.example/x").unwrap(),
            (
                url::Url::parse("https://pg.example/x").unwrap(),
                Some(("me".to_string(), Some("s3cr@t".to_string())))
            )
        );
    }

    #[test]
    fn reads_a_textfile_back() {
        let text = "# HELP x y\n\
            mirrorsync_tag_last_synced_timestamp_seconds{source=\"r/a:1\",target=\"a:1\"} 1700000000.5\n\
            mirrorsync_tag_last_synced_timestamp_seconds{source=\"r/q\\\"x\",target=\"a@sha256:00\"} 17\n\
            mirrorsync_run_last_success_timestamp_seconds 1699999999\n\
            mirrorsync_tag_lag_seconds{source=\"r/a:1\",target=\"a:1\"} 3\n\
            garbage{\n";
        let state = from_samples(&parse_exposition(text));
        assert_eq!(
            state.tags["r/a:1 -> a:1"].last_synced,
            Some(1_700_000_000.5)
        );
        assert_eq!(state.tags["r/q\"x -> a@sha256:00"].last_synced, Some(17.0));
        assert_eq!(state.tags.len(), 2);
        assert_eq!(state.last_success, Some(1_699_999_999.0));
    }
}
