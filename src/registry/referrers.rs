//! `GET /v2/<name>/referrers/<digest>`: the manifests whose `subject` is a digest (OCI
//! distribution-spec 1.1, "Listing Referrers"). A registry without the API (distribution 2.8,
//! many others) answers 404 or another client error; that is remembered for the run.

use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderValue};

use url::Url;

use super::call::Call;
use super::tags::next_link;
use super::{BodyError, RegistryClient, RegistryError, pull, read_limited, redact};
use crate::manifest::{MAX_MANIFEST_BYTES, OCI_INDEX};
use crate::reference::Digest;

/// Pages of one referrers list read at most (a registry that pages forever ends the walk).
const MAX_PAGES: usize = 100;

impl RegistryClient {
    /// The referrer descriptors of `digest`, kept whole (artifact type and annotations
    /// included), or `None` when this registry has no referrers API: a 404, another client
    /// error (but 429), or a 200 that is not an OCI index. Later pages (`Link: <...>;
    /// rel="next"`, as for tag lists) are followed; a failure there is an error.
    pub async fn list_referrers(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<serde_json::Value>>, RegistryError> {
        if self.learned().no_referrers_api() {
            return Ok(None);
        }
        let first = self.url(&format!("v2/{repository}/referrers/{digest}"))?;
        let (body, mut next) = match self.referrers_page(repository, &first).await {
            Ok(Some(page)) => page,
            Ok(None) => {
                self.learned()
                    .lacks_referrers_api(self.host(), "referrers endpoint answered 404");
                return Ok(None);
            }
            Err(e) if matches!(e.status(), Some(s) if (400..500).contains(&s) && s != 429) => {
                self.learned()
                    .lacks_referrers_api(self.host(), &e.to_string());
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(mut entries) = index_entries(&body) else {
            self.learned().lacks_referrers_api(
                self.host(),
                "referrers endpoint answered something that is not an OCI index",
            );
            return Ok(None);
        };
        let mut seen = vec![first];
        while let Some(url) = next.take() {
            if seen.contains(&url) || seen.len() >= MAX_PAGES {
                return Err(RegistryError::protocol(
                    redact(&url),
                    format!("referrers pagination loops or exceeds {MAX_PAGES} pages"),
                ));
            }
            let (body, following) =
                self.referrers_page(repository, &url)
                    .await?
                    .ok_or_else(|| {
                        RegistryError::protocol(redact(&url), "referrers page answered 404")
                    })?;
            let more = index_entries(&body).ok_or_else(|| {
                RegistryError::protocol(redact(&url), "referrers page is not an OCI index")
            })?;
            entries.extend(more);
            seen.push(url);
            next = following;
        }
        Ok(Some(entries))
    }

    /// One page of a referrers list: its body and the next page's URL, `None` on 404.
    async fn referrers_page(
        &self,
        repository: &str,
        url: &Url,
    ) -> Result<Option<(bytes::Bytes, Option<Url>)>, RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let call = Call::new("GET referrers", Method::GET, url.clone(), pull(repository))
            .headers(headers)
            .missing_ok();
        let read = |response: reqwest::Response| async {
            let next = next_link(response.headers(), url);
            let body = read_limited(response, MAX_MANIFEST_BYTES)
                .await
                .map_err(|e| RegistryError::Transport {
                    method: "GET".into(),
                    url: redact(url),
                    detail: match e {
                        BodyError::TooLarge(n) => format!("referrers index larger than {n} bytes"),
                        BodyError::Read(e) => e,
                    },
                })?;
            Ok((body, next))
        };
        self.call_and_read(&call, read).await
    }
}

/// The `manifests` of an OCI index whose entries all carry a sha256 digest, a media type and a
/// size; `None` for anything else.
pub fn index_entries(bytes: &[u8]) -> Option<Vec<serde_json::Value>> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let entries = value.get("manifests")?.as_array()?.clone();
    entries
        .iter()
        .all(|e| entry_digest(e).is_some() && e.get("mediaType").is_some_and(|m| m.is_string()))
        .then_some(entries)
}

/// The digest of one index entry, when it is a valid sha256 digest.
pub fn entry_digest(entry: &serde_json::Value) -> Option<Digest> {
    let digest = Digest::parse(entry.get("digest")?.as_str()?).ok()?;
    digest.is_sha256().then_some(digest)
}
