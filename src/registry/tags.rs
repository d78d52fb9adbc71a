//! `GET /v2/<name>/tags/list` with `Link` pagination.

use std::collections::HashSet;

use reqwest::Method;
use reqwest::header::{self, HeaderMap};
use url::Url;

use super::call::Call;
use super::{RegistryClient, RegistryError, pull, read_limited, redact};

impl RegistryClient {
    /// `GET /v2/<name>/tags/list`, following `Link: <...>; rel="next"` pages verbatim. A page
    /// that was already visited ends the walk with an error rather than looping.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(&format!("v2/{repository}/tags/list"))?;
        let mut seen = HashSet::new();
        let mut tags = Vec::new();
        loop {
            if !seen.insert(url.to_string()) || seen.len() > 100_000 {
                return Err(RegistryError::protocol(&url, "tags list pagination loops"));
            }
            let call = Call::new("GET tags", Method::GET, url.clone(), pull(repository));
            let page_url = url.clone();
            let (next, body) = self
                .call_and_read(&call, |response| async {
                    let next = next_link(response.headers(), &page_url);
                    let body = read_limited(response, 64 << 20).await.map_err(|e| {
                        RegistryError::Transport {
                            method: "GET".into(),
                            url: redact(&page_url),
                            detail: e.to_string(),
                        }
                    })?;
                    Ok((next, body))
                })
                .await?
                .ok_or_else(|| RegistryError::protocol(&url, "tags list answered 404"))?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| RegistryError::protocol(&url, format!("invalid tags list: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => url = next,
                None => return Ok(tags),
            }
        }
    }
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
                return current.join(&target[1..target.len() - 1]).ok();
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
