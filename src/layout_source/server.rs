//! The registry API subset the engine reads, served from a [`Catalogue`] on a loopback port:
//! `GET /v2/`, `HEAD|GET /v2/<name>/manifests/<tag|digest>`, `HEAD|GET /v2/<name>/blobs/<digest>`
//! (with `Range: bytes=<from>-`), and `GET /v2/<name>/tags/list` (with `n` and `last`, and a
//! `Link` to the next page). Anything else is 404; nothing is ever written.
//!
//! Every request must carry the run's Basic credentials (`401` with a `Basic` challenge
//! otherwise).
//!
//! A file is hashed before it is served, once per run (blobs) or on every read (manifests, at
//! most 4 MiB): a file whose content does not hash to its name is answered `400
//! DIGEST_INVALID` with its path, and nothing of it is sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, LINK};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncSeekExt;
use tokio::net::TcpListener;

use super::{Catalogue, Repository};
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::reference::Digest;

type Body = BoxBody<Bytes, std::io::Error>;

/// The catalogue and what was verified of it this run.
struct State {
    catalogue: Arc<Catalogue>,
    /// The `Authorization` header every request must carry.
    authorization: String,
    /// Blob files already hashed: `Ok` when the content matched the name.
    verified: Mutex<HashMap<PathBuf, Result<(), String>>>,
}

/// Serves `catalogue` on `127.0.0.1` at a free port until the returned task is aborted (its
/// connections with it).
pub(super) async fn serve(
    catalogue: Arc<Catalogue>,
    credentials: &crate::config::Credentials,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use base64::Engine as _;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pair = format!("{}:{}", credentials.username, credentials.password.expose());
    let state = Arc::new(State {
        catalogue,
        authorization: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ),
        verified: Mutex::default(),
    });
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = Arc::clone(&state);
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(answer(&state, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

/// What a request path asks for.
enum Route<'a> {
    Ping,
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Tags(&'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Ping);
    }
    let rest = rest.strip_prefix('/')?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest(name, reference));
    }
    let (name, digest) = rest.rsplit_once("/blobs/")?;
    Some(Route::Blob(name, digest))
}

async fn answer(state: &State, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let head = match *request.method() {
        Method::HEAD => true,
        Method::GET => false,
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "read-only"),
    };
    let authorization = request.headers().get(hyper::header::AUTHORIZATION);
    let given = authorization.map(|v| v.as_bytes()).unwrap_or_default();
    if !same_bytes(given, state.authorization.as_bytes()) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "credentials needed",
        );
        header(
            response.headers_mut(),
            hyper::header::WWW_AUTHENTICATE,
            "Basic realm=\"mirrorsync layout\"",
        );
        return response;
    }
    let unknown = || error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "not in the layout");
    let Some(route) = route(request.uri().path()) else {
        return unknown();
    };
    let catalogue = &state.catalogue;
    let response = match route {
        Route::Ping => json(Bytes::from_static(b"{}")),
        Route::Tags(name) => match catalogue.repository(name) {
            Some(repo) => tags(name, repo, request.uri().query()),
            None => unknown(),
        },
        Route::Manifest(name, reference) => match catalogue.repository(name) {
            Some(repo) => manifest(repo, reference).await,
            None => unknown(),
        },
        Route::Blob(name, digest) => match catalogue.repository(name) {
            Some(repo) => blob(state, repo, digest, &request, head).await,
            None => unknown(),
        },
    };
    if head {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, empty());
    }
    response
}

/// `tags/list`, sorted, from after `last`, at most `n`, with a `Link` when more follow.
fn tags(name: &str, repo: &Repository, query: Option<&str>) -> Response<Body> {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let n = params.get("n").and_then(|n| n.parse::<usize>().ok());
    let after = params.get("last");
    let rest: Vec<&String> = repo
        .tags
        .keys()
        .filter(|t| after.is_none_or(|last| *t > last))
        .collect();
    let page: Vec<&String> = rest.iter().take(n.unwrap_or(usize::MAX)).copied().collect();
    let body = serde_json::json!({ "name": name, "tags": page });
    let mut response = json(Bytes::from(body.to_string()));
    if let (Some(n), Some(last)) = (n, page.last())
        && rest.len() > page.len()
    {
        let next: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        if let Ok(link) =
            HeaderValue::from_str(&format!("</v2/{name}/tags/list?{next}>; rel=\"next\""))
        {
            response.headers_mut().insert(LINK, link);
        }
    }
    response
}

async fn manifest(repo: &Repository, reference: &str) -> Response<Body> {
    let (digest, media_type) = match Digest::parse(reference) {
        Ok(digest) => (digest, None),
        Err(_) => match repo.tags.get(reference) {
            Some(t) => (t.digest.clone(), t.media_type.clone()),
            None => return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "no such tag"),
        },
    };
    let Some(path) = repo.blob(&digest) else {
        return error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "not in the layout",
        );
    };
    let bytes = match read_manifest(&path).await {
        Ok(bytes) => bytes,
        Err(message) => return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", &message),
    };
    let found = crate::manifest::digest_of(&bytes);
    if found != digest {
        let message = mismatch(&path, &found);
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", &message);
    }
    let media_type = media_type
        .or_else(|| crate::manifest::resolve_media_type(None, &bytes).ok())
        .unwrap_or_else(|| crate::manifest::OCI_MANIFEST.to_string());
    let length = bytes.len().to_string();
    let mut response = Response::new(full(bytes));
    let headers = response.headers_mut();
    header(headers, CONTENT_LENGTH, &length);
    header(headers, CONTENT_TYPE, &media_type);
    header(headers, "docker-content-digest", &digest.to_string());
    response
}

async fn read_manifest(path: &Path) -> Result<Bytes, String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err(format!(
            "{}: larger than a manifest may be ({MAX_MANIFEST_BYTES} bytes)",
            path.display()
        ));
    }
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|e| format!("{}: {e}", path.display()))
}

async fn blob(
    state: &State,
    repo: &Repository,
    digest: &str,
    request: &Request<hyper::body::Incoming>,
    head: bool,
) -> Response<Body> {
    let Some(path) = Digest::parse(digest).ok().and_then(|d| repo.blob(&d)) else {
        return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "not in the layout");
    };
    // A HEAD only asks for the size; the content is checked when it is read.
    if !head && let Err(message) = verify(state, &path).await {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", &message);
    }
    let failed = |e: std::io::Error| {
        let message = format!("{}: {e}", path.display());
        error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &message)
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) => return failed(e),
    };
    let size = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(e) => return failed(e),
    };
    let from = request
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok());
    let mut status = StatusCode::OK;
    if let Some(from) = from.filter(|f| *f > 0) {
        if from >= size {
            return error(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN", "range");
        }
        if let Err(e) = file.seek(std::io::SeekFrom::Start(from)).await {
            return failed(e);
        }
        status = StatusCode::PARTIAL_CONTENT;
    }
    let start = if status == StatusCode::PARTIAL_CONTENT {
        from.unwrap_or(0)
    } else {
        0
    };
    let stream = tokio_util::io::ReaderStream::new(file).map_ok(Frame::data);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    header(headers, CONTENT_TYPE, "application/octet-stream");
    header(headers, CONTENT_LENGTH, &(size - start).to_string());
    header(headers, "docker-content-digest", digest);
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{size}", size - 1);
        header(headers, CONTENT_RANGE, &range);
    }
    response
}

/// Hashes a blob file once per run: `Err` names the file when its content does not match its
/// name (truncated, altered) or it cannot be read.
async fn verify(state: &State, path: &Path) -> Result<(), String> {
    let known = state
        .verified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(path)
        .cloned();
    if let Some(known) = known {
        return known;
    }
    let owned = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || hash_file(&owned))
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
        .and_then(|r| r.map_err(|e| format!("{}: {e}", path.display())))
        .and_then(|found| {
            let named = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if found.encoded() == named {
                Ok(())
            } else {
                Err(mismatch(path, &found))
            }
        });
    state
        .verified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_path_buf(), result.clone());
    result
}

fn hash_file(path: &Path) -> std::io::Result<Digest> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_sha256_bytes(&hasher.finalize().into()))
}

fn mismatch(path: &Path, found: &Digest) -> String {
    format!(
        "{}: the file's content hashes to {found}, not to its name (truncated or altered); the tags that need it are not loaded",
        path.display()
    )
}

fn header(headers: &mut hyper::HeaderMap, name: impl hyper::header::IntoHeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

fn json(bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(full(bytes));
    header(response.headers_mut(), CONTENT_TYPE, "application/json");
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    let mut response = json(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response
}

/// Compares in time independent of where the inputs differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(tags: &[&str]) -> Repository {
        let digest = Digest::sha256_hex(&"a".repeat(64));
        Repository {
            dirs: Vec::new(),
            tags: tags
                .iter()
                .map(|t| {
                    let tagged = super::super::Tagged {
                        digest: digest.clone(),
                        media_type: None,
                    };
                    (t.to_string(), tagged)
                })
                .collect(),
        }
    }

    async fn body(response: Response<Body>) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn routes_split_names_with_slashes_from_what_they_ask() {
        assert!(matches!(route("/v2/"), Some(Route::Ping)));
        assert!(matches!(
            route("/v2/a/b/tags/list"),
            Some(Route::Tags("a/b"))
        ));
        assert!(matches!(
            route("/v2/a/manifests/b/manifests/1.0"),
            Some(Route::Manifest("a/manifests/b", "1.0"))
        ));
        assert!(matches!(
            route("/v2/lib/x/blobs/sha256:00"),
            Some(Route::Blob("lib/x", "sha256:00"))
        ));
        assert!(route("/v3/x").is_none());
        assert!(route("/v2/x/referrers/sha256:00").is_none());
    }

    #[tokio::test]
    async fn tag_lists_page_with_n_and_last_and_link_to_the_next_page() {
        let r = repo(&["1.0", "1.1", "2.0"]);
        let first = tags("lib/x", &r, Some("n=2"));
        let link = first
            .headers()
            .get(LINK)
            .expect("link")
            .to_str()
            .expect("text");
        assert_eq!(link, "</v2/lib/x/tags/list?n=2&last=1.1>; rel=\"next\"");
        assert_eq!(body(first).await["tags"], serde_json::json!(["1.0", "1.1"]));
        let last = tags("lib/x", &r, Some("n=2&last=1.1"));
        assert!(last.headers().get(LINK).is_none());
        assert_eq!(body(last).await["tags"], serde_json::json!(["2.0"]));
        let all = tags("lib/x", &r, None);
        assert_eq!(
            body(all).await["tags"],
            serde_json::json!(["1.0", "1.1", "2.0"])
        );
    }

    #[test]
    fn credentials_compare_whole() {
        assert!(same_bytes(b"Basic abc", b"Basic abc"));
        assert!(!same_bytes(b"Basic abd", b"Basic abc"));
        assert!(!same_bytes(b"Basic ab", b"Basic abc"));
    }
}
