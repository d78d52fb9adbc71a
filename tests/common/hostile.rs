//! Small hostile registries for the security tests: servers that answer what no honest
//! registry would, built on the fly so that they can be endless or huge without holding it.
//!
//! [`Hostile::start`] listens on `127.0.0.1:0` and answers each HTTP/1.1 request (keep-alive)
//! with a handler's [`Reply`], recording every request it was sent ([`Hostile::seen`]). Two
//! handlers are built in:
//! - [`Hostile::endless_tags`]: `GET /v2/<repo>/tags/list` pages that never end, each with a
//!   `Link: <...?page=N+1>; rel="next"`, of `tags_per_page` tags of `tag_len` characters (and
//!   optional padding);
//! - [`Hostile::huge_index`]: `<repo>:v1` is an OCI index of `children` image manifests of
//!   `child_size` bytes each (padded with an annotation), all sharing one config and one layer
//!   blob; manifests and blobs are served by tag and digest, `HEAD` and `GET`, as a registry
//!   would. A child's bytes are made again for each request, never stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::image::{OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST};
use super::util::sha256_digest;

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Query string without `?` (empty if none).
    pub query: String,
}

/// What the server answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    pub fn not_found() -> Reply {
        Reply::new(
            404,
            &[("Content-Type", "application/json")],
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"not here"}]}"#,
        )
    }
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A running hostile server; stops accepting on drop.
pub struct Hostile {
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Serves `handler` on `127.0.0.1:<ephemeral>`.
    pub async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, record) = (Arc::clone(&handler), Arc::clone(&record));
                connections.spawn(serve(stream, handler, record));
            }
        });
        Hostile { port, seen, task }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Request> {
        self.seen.lock().expect("seen").clone()
    }

    /// Tag-list pages of `repo` without end (see the module doc), each also carrying
    /// `padding` bytes in a field of its own.
    pub async fn endless_tags(
        repo: &str,
        tags_per_page: usize,
        tag_len: usize,
        padding: usize,
    ) -> Hostile {
        let list = format!("/v2/{repo}/tags/list");
        Hostile::start(move |req| {
            if req.path == "/v2/" {
                return Reply::new(200, &[], "{}");
            }
            if req.path != list {
                return Reply::not_found();
            }
            let page: u64 = req
                .query
                .strip_prefix("page=")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let tags: Vec<String> = (0..tags_per_page)
                .map(|i| {
                    let name = format!("p{page}-t{i}-");
                    let pad = tag_len.saturating_sub(name.len());
                    format!("{name}{}", "x".repeat(pad))
                })
                .collect();
            let body =
                serde_json::json!({ "name": list, "tags": tags, "padding": "p".repeat(padding) })
                    .to_string();
            let link = format!("<{list}?page={}>; rel=\"next\"", page + 1);
            Reply::new(
                200,
                &[("Content-Type", "application/json"), ("Link", &link)],
                body,
            )
        })
        .await
    }

    /// `repo:v1`, an index of `children` manifests of `child_size` bytes (see the module doc).
    /// Returns the server and the index digest.
    pub async fn huge_index(repo: &str, children: usize, child_size: usize) -> (Hostile, String) {
        let content = Arc::new(HugeIndex::new(children, child_size));
        let digest = content.index_digest.clone();
        let prefix = format!("/v2/{repo}/");
        let server = Hostile::start(move |req| {
            if req.path == "/v2/" {
                return Reply::new(200, &[], "{}");
            }
            match req.path.strip_prefix(&prefix) {
                Some(rest) => content.answer(&req.method, rest),
                None => Reply::not_found(),
            }
        })
        .await;
        (server, digest)
    }
}

/// The content of [`Hostile::huge_index`].
struct HugeIndex {
    config: Bytes,
    layer: Bytes,
    child_size: usize,
    /// Child digest -> its number.
    children: HashMap<String, usize>,
    index: Bytes,
    index_digest: String,
}

impl HugeIndex {
    fn new(count: usize, child_size: usize) -> HugeIndex {
        let config = Bytes::from_static(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let layer = Bytes::from(super::util::layer(9_101, 2048));
        let mut this = HugeIndex {
            config,
            layer,
            child_size,
            children: HashMap::new(),
            index: Bytes::new(),
            index_digest: String::new(),
        };
        let mut entries = Vec::new();
        for i in 0..count {
            let child = this.child(i);
            let digest = sha256_digest(&child);
            entries.push(serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": child.len(),
                "platform": {"os": "linux", "architecture": format!("arch{i}")},
            }));
            this.children.insert(digest, i);
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        });
        this.index = Bytes::from(serde_json::to_vec(&index).expect("index"));
        this.index_digest = sha256_digest(&this.index);
        this
    }

    /// Child `i`: an image manifest padded to `child_size` bytes with an annotation.
    fn child(&self, i: usize) -> Vec<u8> {
        let head = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(&self.config), "size": self.config.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256_digest(&self.layer), "size": self.layer.len()}],
        })
        .to_string();
        // `{...,"annotations":{"pad":"<i>-xxxx"}}`
        let open = format!(r#"{},"annotations":{{"pad":"{i}-"#, &head[..head.len() - 1]);
        let close = r#""}}"#;
        let pad = self.child_size.saturating_sub(open.len() + close.len());
        let mut out = Vec::with_capacity(self.child_size);
        out.extend_from_slice(open.as_bytes());
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(close.as_bytes());
        out
    }

    fn answer(&self, method: &str, rest: &str) -> Reply {
        let (body, media_type): (Bytes, &str) =
            if let Some(reference) = rest.strip_prefix("manifests/") {
                if reference == "v1" || reference == self.index_digest {
                    (self.index.clone(), OCI_INDEX)
                } else if let Some(i) = self.children.get(reference) {
                    (Bytes::from(self.child(*i)), OCI_MANIFEST)
                } else {
                    return Reply::not_found();
                }
            } else if let Some(digest) = rest.strip_prefix("blobs/") {
                if digest == sha256_digest(&self.config) {
                    (self.config.clone(), "application/octet-stream")
                } else if digest == sha256_digest(&self.layer) {
                    (self.layer.clone(), "application/octet-stream")
                } else {
                    return Reply::not_found();
                }
            } else {
                return Reply::not_found();
            };
        let digest = sha256_digest(&body);
        let length = body.len().to_string();
        let headers = [
            ("Content-Type", media_type),
            ("Docker-Content-Digest", digest.as_str()),
            ("Content-Length", length.as_str()),
        ];
        let body = if method == "HEAD" { Bytes::new() } else { body };
        Reply::new(200, &headers, body)
    }
}

/// Serves one connection: requests in turn until the client closes it.
async fn serve(stream: tokio::net::TcpStream, handler: Handler, record: Arc<Mutex<Vec<Request>>>) {
    let _ = stream.set_nodelay(true);
    let mut conn = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match conn.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if conn.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let length: u64 = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if length > 0
            && tokio::io::copy(&mut (&mut conn).take(length), &mut tokio::io::sink())
                .await
                .is_err()
        {
            return;
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let request = Request {
            method: method.clone(),
            path,
            query,
        };
        record.lock().expect("record").push(request.clone());
        let reply = handler(&request);
        let mut head = format!("HTTP/1.1 {} Hostile\r\n", reply.status);
        let mut has_length = false;
        for (k, v) in &reply.headers {
            has_length |= k.eq_ignore_ascii_case("content-length");
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_length {
            head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
        }
        head.push_str("\r\n");
        // One write: a head and a body sent apart wait on Nagle and delayed ACKs (40 ms).
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&reply.body);
        if conn.get_mut().write_all(&bytes).await.is_err() {
            return;
        }
    }
}
