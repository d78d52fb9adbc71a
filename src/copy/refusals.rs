//! Refusals by the target that a user can act on, said in words: a repository path it does not
//! allow, manifests pushed by digest it does not take, a tag it keeps immutable. Each becomes
//! [`SyncError::Refused`] with its [`FailureCause`], so the tag's line says what to change and
//! the count of such failures stands apart from breakage.

use super::SyncError;
use crate::config::SyncItem;
use crate::destination::{Target, TargetError};
use crate::outcome::FailureCause;
use crate::reference::Digest;
use crate::registry::RegistryError;

impl SyncError {
    /// The kind of failure, for counting apart (see [`FailureCause`]).
    pub(super) fn cause(&self) -> FailureCause {
        match self {
            SyncError::Refused { cause, .. } => *cause,
            SyncError::Shared(inner) => inner.cause(),
            _ => FailureCause::Other,
        }
    }
}

/// The registry error at the bottom of `error`, if there is one.
fn registry_error(error: &SyncError) -> Option<&RegistryError> {
    match error {
        SyncError::Target(TargetError::Registry(e)) => Some(e),
        SyncError::Shared(inner) => registry_error(inner),
        _ => None,
    }
}

/// The registry's own words (codes and messages, or a body excerpt), lower case, for matching.
fn words(error: &RegistryError) -> String {
    match error {
        RegistryError::Status {
            errors,
            body_excerpt,
            ..
        } => {
            let mut text: String = errors
                .iter()
                .map(|e| format!("{} {} ", e.code, e.message))
                .collect();
            text.push_str(body_excerpt.as_deref().unwrap_or(""));
            text.to_lowercase()
        }
        _ => String::new(),
    }
}

/// Whether `error` is an upload `POST` refused with 400 or 404: the registry does not take this
/// repository path (distribution answers those only for a name it does not allow).
fn refuses_path(error: &RegistryError) -> bool {
    matches!(error, RegistryError::Status { method, url, status: 400 | 404, .. }
        if method == "POST" && url.contains("/blobs/uploads/"))
}

/// The words for a repository path the target refused (`sync` and `check --connect` alike).
pub fn path_refused(repository: &str, error: &RegistryError) -> Option<String> {
    if !refuses_path(error) {
        return None;
    }
    let depth = repository.split('/').count();
    Some(format!(
        "the target refused the repository path {repository} ({depth} components; {error}); \
         some registries allow exactly two (namespace/name): change the path with `prefix` \
         (target.prefix or registries.<host>.prefix) or the entry's `target:`"
    ))
}

/// A tag's failure, with the repository path refusal said in words when that is what it was.
pub(super) fn explain_path(item: &SyncItem, error: SyncError) -> SyncError {
    match registry_error(&error).and_then(|e| path_refused(&item.target_repository, e)) {
        Some(message) => SyncError::Refused {
            cause: FailureCause::NameRefused,
            message,
        },
        None => error,
    }
}

/// The final tag `PUT` failed: a target that keeps the tag immutable is said in words.
pub(super) fn explain_tag_put(
    item: &SyncItem,
    previous: Option<&Digest>,
    error: TargetError,
) -> SyncError {
    let TargetError::Registry(registry) = &error else {
        return error.into();
    };
    let immutable = matches!(registry.status(), Some(400 | 403 | 409 | 412))
        && words(registry).contains("immutable");
    match (immutable, previous, &item.target_tag) {
        (true, Some(previous), Some(tag)) => SyncError::Refused {
            cause: FailureCause::TagImmutable,
            message: format!(
                "upstream moved {} but the target keeps {}:{tag} immutable, so it still holds \
                 {previous} ({registry}); to follow upstream, lift the target's immutability \
                 rule for this tag (`backup_tag` then keeps the old image under another tag) \
                 or mirror it under another name with `target:`; to stop checking it, list it \
                 in the entry's `immutable:`",
                item.source, item.target_repository
            ),
        },
        _ => error.into(),
    }
}

/// A child manifest `PUT` by digest failed: a target that refuses manifests by digest is said
/// in words (errors about the content itself, a missing blob or an invalid manifest, are not),
/// and remembered for the rest of the run.
pub(super) fn explain_by_digest(error: TargetError, target: &Target) -> SyncError {
    let TargetError::Registry(registry) = &error else {
        return error.into();
    };
    let content = [
        "manifest_blob_unknown",
        "manifest_invalid",
        "blob_unknown",
        "digest_invalid",
    ];
    let refused = matches!(registry.status(), Some(400 | 404 | 405 | 415 | 501))
        && !content.iter().any(|c| words(registry).contains(c));
    if !refused {
        return error.into();
    }
    let why = registry.to_string();
    target.refuse_by_digest(&why);
    by_digest_refused(&why)
}

/// A multi-platform tag for a target that refused a manifest pushed by digest earlier in the
/// run (`first`: what it said then): failed before anything is copied for it.
pub(super) fn refused_by_digest_before(first: &str) -> SyncError {
    by_digest_refused(&format!("refused earlier in this run: {first}"))
}

fn by_digest_refused(detail: &str) -> SyncError {
    SyncError::Refused {
        cause: FailureCause::ByDigestRefused,
        message: format!(
            "the target refuses manifests pushed by digest, so a multi-platform image cannot \
             be stored there ({detail}); choose one platform with `platforms:` and store it \
             as a plain image with `platforms_mode: single`"
        ),
    }
}
