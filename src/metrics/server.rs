//! `/metrics` and `/healthz` over HTTP/1.1, served with hyper, for the long-running
//! `mirrorsync sync`.
//!
//! Scrapes must get through whatever else is connected: the accept loop never waits for a free
//! slot. Up to [`Limits::max_connections`] connections are served at once; one more is answered
//! `503` at once and closed, instead of queueing behind idle ones. A client has
//! [`Limits::header_read_timeout`] to send a whole request head, whether the connection is new or
//! kept alive after an answer, so idle and trickling connections free their slot on their own;
//! request heads are capped at [`Limits::max_header_bytes`] (`431` beyond); and a connection
//! lives at most [`Limits::max_connection_lifetime`], so a client that stops reading cannot hold
//! its slot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;

/// A health check: `Ok(())` when healthy, else the reason.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Bounds on what clients of the server can hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// Time to send a complete request head, counted from the connection's start or the end of
    /// the previous answer (the keep-alive idle timeout too).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Longest a connection may stay open, whatever it does.
    pub max_connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            max_connection_lifetime: Duration::from_secs(120),
        }
    }
}

/// Over-limit connections being answered `503` at once; beyond that they are closed unanswered.
const MAX_REFUSING: usize = 64;
/// How long answering an over-limit connection may take.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `GET /metrics` (text format 0.0.4) and `GET /healthz` (200 `ok` when `healthy()` is
/// Ok, else 503 with the reason) on `addr`, with the default [`Limits`]. `HEAD` answers the
/// headers alone; other methods get 405 with `Allow: GET, HEAD`, other paths 404, malformed
/// requests 400.
///
/// Returns the bound address (bind `127.0.0.1:0` in tests) and the accept loop's task; abort
/// it to stop accepting.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    healthy: HealthCheck,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(addr, metrics, healthy, Limits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    healthy: HealthCheck,
    limits: Limits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                let (metrics, healthy) = (Arc::clone(&metrics), Arc::clone(&healthy));
                tokio::spawn(async move {
                    serve_connection(stream, metrics, healthy, limits).await;
                    drop(slot);
                });
            } else if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(permit);
                });
            }
            // else: dropped here, closed unanswered.
        }
    });
    Ok((local, task))
}

async fn serve_connection(
    stream: TcpStream,
    metrics: Arc<Metrics>,
    healthy: HealthCheck,
    limits: Limits,
) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = respond(req.method(), req.uri().path(), &metrics, &healthy);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    // Errors are the client's (malformed request, reset, timeout): hyper has answered what
    // could be answered; nothing to log at the default level.
    match tokio::time::timeout(limits.max_connection_lifetime, connection).await {
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics server: connection ended"),
        Err(_) => tracing::debug!("metrics server: connection lifetime reached"),
        Ok(Ok(())) => {}
    }
}

/// Answers an over-limit connection `503` and closes it, reading a little of what the client
/// sent so that the close does not reset the connection before the answer is read.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = "too many connections\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer to `method path` (hyper leaves the body out of a `HEAD` answer).
fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    healthy: &HealthCheck,
) -> Response<Full<Bytes>> {
    if path != "/metrics" && path != "/healthz" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/metrics" {
        let mut r = text(StatusCode::OK, metrics.render());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
        return r;
    }
    match healthy() {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}\n", reason.replace(['\r', '\n'], " ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `raw` on a new connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn metrics() -> Arc<Metrics> {
        let m = Metrics::new();
        m.set_tag(
            "docker.io/library/nginx:1.25",
            "m/nginx:1.25",
            true,
            Some(1.0),
            0.0,
        );
        m
    }

    #[tokio::test]
    async fn answers_metrics_healthz_head_and_errors() {
        let m = metrics();
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let health: HealthCheck = {
            let ok = ok.clone();
            Arc::new(move || {
                if ok.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("a pass made no progress for 600s\nsecond line".to_string())
                }
            })
        };
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m.clone(), health)
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);

        let close = "Connection: close\r\n";
        let r = exchange(
            addr,
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}\r\n").as_bytes(),
        )
        .await;
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert_eq!(body, m.render());

        // HTTP/1.0 closes by default; the query string is ignored.
        let r = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.0 200 OK") || r.starts_with("HTTP/1.1 200 OK"),
            "{r}"
        );

        // HEAD: the headers of the GET answer, no body.
        let r = exchange(
            addr,
            format!("HEAD /metrics HTTP/1.1\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        assert!(
            r.contains(&format!("Content-Length: {}\r\n", m.render().len())),
            "{r}"
        );
        let r = exchange(
            addr,
            format!("HEAD /healthz HTTP/1.1\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("\r\n\r\n"),
            "{r}"
        );

        let r = exchange(
            addr,
            format!("GET /healthz HTTP/1.1\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("\r\n\r\nok\n"),
            "{r}"
        );
        ok.store(false, std::sync::atomic::Ordering::Relaxed);
        let r = exchange(
            addr,
            format!("GET /healthz HTTP/1.1\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable"), "{r}");
        assert!(
            r.ends_with("unhealthy: a pass made no progress for 600s second line\n"),
            "{r}"
        );

        let r = exchange(
            addr,
            format!("GET /other HTTP/1.1\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = exchange(
            addr,
            format!("HEAD /other HTTP/1.1\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 404 ") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        for method in ["POST", "PUT", "DELETE", "BREW"] {
            let r = exchange(
                addr,
                format!("{method} /metrics HTTP/1.1\r\nContent-Length: 0\r\n{close}\r\n")
                    .as_bytes(),
            )
            .await;
            assert!(
                r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"),
                "{method}: {r}"
            );
        }

        // Garbage, binary, unsupported versions, oversized heads.
        for raw in [
            &b"\x00\xff\xfe garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
        ] {
            let r = exchange(addr, raw).await;
            assert!(
                r.starts_with("HTTP/1.1 400 ") || r.is_empty(),
                "{raw:?}: {r}"
            );
        }
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 20_000));
        huge.extend(b"\r\n\r\n");
        let r = exchange(addr, &huge).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /met").await.unwrap();
        }

        // Keep-alive: two requests on one connection.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.matches("HTTP/1.1 503 ").count(), 2, "{out}");

        // Still serving after all that.
        let r = exchange(
            addr,
            format!("GET /metrics HTTP/1.1\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test]
    async fn idle_connections_time_out_and_over_limit_ones_get_503_at_once() {
        let limits = Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(700),
            max_header_bytes: 8 * 1024,
            max_connection_lifetime: Duration::from_secs(5),
        };
        let (addr, task) = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            metrics(),
            Arc::new(|| Ok(())),
            limits,
        )
        .await
        .unwrap();

        // Eight idle connections fill every slot.
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The ninth is answered 503 at once, not queued.
        let started = std::time::Instant::now();
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );

        // The idle ones are closed by the header-read timeout (no request ever came)...
        for mut s in idle {
            let mut buf = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
                .await
                .expect("closed by the server");
            assert!(n.is_ok() || buf.is_empty(), "{n:?}");
        }
        // ...which frees their slots.
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");

        // A kept-alive connection idle after an answer is closed too.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
            .await
            .expect("idle keep-alive connection closed")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200 "));
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );

        // A client that trickles its head one byte at a time is cut off at the same deadline.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let mut closed = false;
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: "
            .iter()
            .cycle()
            .take(100)
        {
            if s.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        if !closed {
            let mut buf = Vec::new();
            let r = tokio::time::timeout(Duration::from_millis(100), s.read_to_end(&mut buf)).await;
            closed = matches!(r, Ok(Ok(_)) | Ok(Err(_)));
        }
        assert!(closed, "a trickling client was not cut off");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        task.abort();
    }
}
