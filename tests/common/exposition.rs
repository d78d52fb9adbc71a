//! Prometheus text exposition, parsed independently of the code under test, and the metric
//! families the README promises.

use std::collections::{BTreeMap, HashMap};

/// One sample: `name{labels} value`.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A set of metric families: samples, `# TYPE` and `# HELP` per family name.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
    pub helps: HashMap<String, String>,
    pub text: String,
}

impl Exposition {
    /// Parses the text format 0.0.4 (panics on a line it cannot read).
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition {
            text: text.to_string(),
            ..Exposition::default()
        };
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                e.types.insert(name.to_string(), kind.trim().to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                e.helps.insert(name.to_string(), help.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            e.samples.push(parse_sample(line));
        }
        e
    }

    /// Samples of `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` matching `labels`; panics unless exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(
            found.len(),
            1,
            "expected exactly one sample {name}{labels:?}, found {}:\n{}",
            found.len(),
            self.text
        );
        found[0].value
    }

    /// Like [`Exposition::value`] but `None` when absent.
    pub fn value_opt(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "more than one sample {name}{labels:?}:\n{}",
            self.text
        );
        found.first().map(|s| s.value)
    }
}

pub fn unreadable(line: &str) -> ! {
    panic!("unreadable sample line: {line:?}")
}

pub fn parse_sample(line: &str) -> Sample {
    let bad = || unreadable(line);
    let Some(name_end) = line.find(['{', ' ']) else {
        bad()
    };
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        let mut key = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let Some((_, '"')) = chars.next() else { bad() };
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c)) => value.push(c),
                                None => bad(),
                            },
                            Some((_, '"')) => break,
                            Some((_, c)) => value.push(c),
                            None => bad(),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        let Some(end) = end else { bad() };
        rest = &inner[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let Some(value) = fields.next() else { bad() };
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| unreadable(line)),
    };
    Sample {
        name,
        labels,
        value,
    }
}

/// The families the README's "Observability" table names, with their types. `mirrorsync_ratelimit_remaining` is
/// left out: it only exists once an upstream sent a `ratelimit-remaining` header, which a
/// plain registry never does.
pub const CONTRACT: &[(&str, &str)] = &[
    ("mirrorsync_run_last_success_timestamp_seconds", "gauge"),
    ("mirrorsync_run_duration_seconds", "gauge"),
    ("mirrorsync_run_tags", "gauge"),
    ("mirrorsync_tag_in_sync", "gauge"),
    ("mirrorsync_tag_last_synced_timestamp_seconds", "gauge"),
    ("mirrorsync_tag_lag_seconds", "gauge"),
    ("mirrorsync_blobs_total", "counter"),
    ("mirrorsync_bytes_copied_total", "counter"),
    ("mirrorsync_http_requests_total", "counter"),
    ("mirrorsync_runs_total", "counter"),
    ("mirrorsync_process_start_time_seconds", "gauge"),
];

/// The families only the daemon has, with their types.
pub const DAEMON_ONLY: &[(&str, &str)] = &[
    ("mirrorsync_config_last_reload_successful", "gauge"),
    (
        "mirrorsync_config_last_reload_success_timestamp_seconds",
        "gauge",
    ),
];

/// Every family of [`CONTRACT`] is present with its type and a non-empty HELP.
pub fn assert_contract_families(e: &Exposition) {
    for (name, kind) in CONTRACT {
        assert_eq!(
            e.types.get(*name).map(String::as_str),
            Some(*kind),
            "TYPE of {name}:\n{}",
            e.text
        );
        assert!(
            e.helps.get(*name).is_some_and(|h| !h.trim().is_empty()),
            "HELP of {name}:\n{}",
            e.text
        );
        assert!(
            !e.find(name, &[]).is_empty(),
            "no sample of {name}:\n{}",
            e.text
        );
    }
}
