//! Config errors: every one names the file, and where it can the line, column and key path,
//! so that `mirrorsync check` can say `sync.yaml:4:3: target.regisry: unknown key ...`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

/// Why `sync.yaml` could not be turned into a [`super::Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A syntax, type or validation error at a known place in the file.
    #[error("{}: {message}", Where { file, line: *line, column: *column, key })]
    Invalid {
        /// The config file as it was named.
        file: PathBuf,
        /// 1-based line, 0 when unknown.
        line: u64,
        /// 1-based column, 0 when unknown.
        column: u64,
        /// Key path such as `images[2].tags[0]`; empty for the document itself.
        key: String,
        /// What is wrong, in one line. Never contains a secret.
        message: String,
    },
}

/// `file:line:col: key`, the start of every located message.
struct Where<'a> {
    file: &'a Path,
    line: u64,
    column: u64,
    key: &'a str,
}

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The key path of an [`ConfigError::Invalid`] error (`""` for I/O errors).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Io { .. } => "",
            ConfigError::Invalid { key, .. } => key,
        }
    }
}

/// Builds [`ConfigError::Invalid`] for one file; shared by parsing and validation.
#[derive(Debug, Clone)]
pub(crate) struct ErrorSite {
    file: PathBuf,
}

impl ErrorSite {
    pub(crate) fn new(file: &Path) -> Self {
        ErrorSite {
            file: file.to_path_buf(),
        }
    }

    /// An error at `location` about the value at key path `key`.
    pub(crate) fn at(
        &self,
        location: Location,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = if location == Location::UNKNOWN {
            (0, 0)
        } else {
            (location.line(), location.column())
        };
        ConfigError::Invalid {
            file: self.file.clone(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error about a spanned value.
    pub(crate) fn spanned<T>(
        &self,
        value: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.at(value.referenced, key, message)
    }

    /// "file:line:col (key)", how an image entry is named in messages.
    pub(crate) fn describe(&self, location: Location, key: &str) -> String {
        format!(
            "{} ({key})",
            Where {
                file: &self.file,
                line: location.line(),
                column: location.column(),
                key: "",
            }
        )
    }

    /// Converts a serde-saphyr error and the key path serde_path_to_error tracked for it.
    pub(crate) fn yaml_error(
        &self,
        error: &serde_saphyr::Error,
        path: Option<&serde_path_to_error::Path>,
    ) -> ConfigError {
        let error = error.without_snippet();
        let location = error.location().unwrap_or(Location::UNKNOWN);
        let unknown_field = matches!(error, serde_saphyr::Error::SerdeUnknownField { .. });
        let key = path.map(|p| key_path(p, unknown_field)).unwrap_or_default();
        self.at(location, key, yaml_message(error))
    }
}

/// Renders a tracked path as `images[2].tags[0]`, dropping what `Spanned` adds (a `value`
/// segment after each spanned node) and segments whose key was not a string.
fn key_path(path: &serde_path_to_error::Path, unknown_field: bool) -> String {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match segment {
            // An unknown key literally named `value` is the user's, not Spanned's.
            Segment::Map { key } if key == "value" && !(last && unknown_field) => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    out
}

/// One clear line for a YAML error, without serde-saphyr's " at line L, column C" suffix.
fn yaml_message(error: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    match error {
        E::SerdeUnknownField { expected, .. } => {
            format!("unknown key (expected one of {})", expected.join(", "))
        }
        E::SerdeMissingField { field, .. } => format!("missing key `{field}`"),
        E::DuplicateMappingKey { key: Some(key), .. } => format!("duplicate key `{key}`"),
        E::DuplicateMappingKey { key: None, .. } => "duplicate key".to_string(),
        E::InvalidScalar { ty, .. } => format!("expected {}", type_name(ty)),
        other => {
            let text = other.to_string();
            let text = match text.rfind(" at line ") {
                Some(i) if text[i..].contains(", column ") => text[..i].to_string(),
                _ => text,
            };
            let text = text
                .replace("expected sequence start", "expected a list")
                .replace("expected mapping start", "expected a mapping")
                .replace("expected string scalar", "expected a string")
                .replace("expected boolean", "expected true or false");
            text.lines().next().unwrap_or_default().to_string()
        }
    }
}

fn type_name(ty: &str) -> &str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "bool" | "boolean" => "true or false",
        other => other,
    }
}
