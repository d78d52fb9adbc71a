//! `GET /v2/<name>/tags/list` with `Link` pagination.

use std::collections::HashSet;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{self, HeaderMap};
use url::Url;

use super::call::Call;
use super::{BodyError, RegistryClient, RegistryError, pull, read_limited, redact};
use crate::reference::validate_tag;

/// Most tags one repository's list may hold, over all its pages.
pub const MAX_LISTED_TAGS: usize = 250_000;
/// Most bytes read for one repository's tag list: page bodies and `Link` URLs together.
pub const MAX_TAG_LIST_BYTES: usize = 32 << 20;
/// Most pages of one repository's tag list.
pub const MAX_TAG_LIST_PAGES: usize = 10_000;
/// Invalid listed tags named one by one in warnings; past this they are only counted.
const INVALID_TAGS_NAMED: usize = 10;

impl RegistryClient {
    /// `GET /v2/<name>/tags/list`, following `Link: <...>; rel="next"` pages verbatim. A page
    /// that was already visited ends the walk with an error rather than looping. A listed tag
    /// outside the tag grammar (`1.0/../../x`, control characters) is skipped with a warning
    /// that names it escaped; past [`MAX_LISTED_TAGS`] tags, [`MAX_TAG_LIST_BYTES`] bytes or
    /// [`MAX_TAG_LIST_PAGES`] pages the list is an error, so a hostile registry cannot make
    /// the run hold an endless list.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(&format!("v2/{repository}/tags/list"))?;
        let mut seen = HashSet::new();
        let mut tags = Vec::new();
        let mut left = MAX_TAG_LIST_BYTES;
        let mut invalid = 0;
        loop {
            if !seen.insert(url.to_string()) {
                return Err(RegistryError::protocol(&url, "tags list pagination loops"));
            }
            if seen.len() > MAX_TAG_LIST_PAGES {
                return Err(too_big(
                    repository,
                    &url,
                    format!("more than {MAX_TAG_LIST_PAGES} pages"),
                ));
            }
            let (next, body) = self.tags_page(repository, &url, left).await?;
            let spent = body.len() + next.as_ref().map_or(0, |n| n.as_str().len());
            left = left.checked_sub(spent).ok_or_else(|| {
                too_big(
                    repository,
                    &url,
                    format!("more than {MAX_TAG_LIST_BYTES} bytes over its pages"),
                )
            })?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| RegistryError::protocol(&url, format!("invalid tags list: {e}")))?;
            for tag in page.tags.unwrap_or_default() {
                if validate_tag(&tag).is_ok() {
                    tags.push(tag);
                    continue;
                }
                invalid += 1;
                if invalid <= INVALID_TAGS_NAMED {
                    tracing::warn!(registry = %self.label, repository, tag = ?tag, "listed tag is not a valid tag name; skipped");
                }
            }
            if tags.len() > MAX_LISTED_TAGS {
                return Err(too_big(
                    repository,
                    &url,
                    format!("more than {MAX_LISTED_TAGS} tags"),
                ));
            }
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        if invalid > INVALID_TAGS_NAMED {
            tracing::warn!(registry = %self.label, repository, skipped = invalid, "listed tags that are not valid tag names were skipped (the first {INVALID_TAGS_NAMED} named above)");
        }
        Ok(tags)
    }

    /// One page of a tag list: the next page's URL (from `Link`) and the body, read up to
    /// `limit` bytes (what is left of [`MAX_TAG_LIST_BYTES`]).
    async fn tags_page(
        &self,
        repository: &str,
        url: &Url,
        limit: usize,
    ) -> Result<(Option<Url>, Bytes), RegistryError> {
        let call = Call::new("GET tags", Method::GET, url.clone(), pull(repository));
        self.call_and_read(&call, |response| async {
            let next = next_link(response.headers(), url);
            let body = read_limited(response, limit).await.map_err(|e| match e {
                BodyError::TooLarge(_) => too_big(
                    repository,
                    url,
                    format!("more than {MAX_TAG_LIST_BYTES} bytes over its pages"),
                ),
                BodyError::Read(detail) => RegistryError::Transport {
                    method: "GET".into(),
                    url: redact(url),
                    detail,
                },
            })?;
            Ok((next, body))
        })
        .await?
        .ok_or_else(|| RegistryError::protocol(url, "tags list answered 404"))
    }
}

/// A tag list over one of mirrorsync's limits.
fn too_big(repository: &str, url: &Url, what: String) -> RegistryError {
    RegistryError::protocol(
        url,
        format!("the tag list of {repository} has {what}: it is not read (a limit of mirrorsync)"),
    )
}

/// The next page from a `Link: <url>; rel="next"` header, resolved against the current URL.
pub(super) fn next_link(headers: &HeaderMap, current: &Url) -> Option<Url> {
    for value in headers.get_all(header::LINK) {
        let text = value.to_str().ok()?;
        for part in text.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next && target.starts_with('<') && target.ends_with('>') {
                return current
                    .join(&target[1..target.len() - 1])
                    .ok()
                    .filter(super::origin::is_web_url);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn follows_link_next() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LINK,
            HeaderValue::from_static(r#"</v2/a/tags/list?last=t1&n=2>; rel="next""#),
        );
        let current = Url::parse("http://127.0.0.1:5000/v2/a/tags/list").unwrap();
        assert_eq!(
            next_link(&headers, &current).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/tags/list?last=t1&n=2"
        );
        assert!(next_link(&HeaderMap::new(), &current).is_none());
    }
}
