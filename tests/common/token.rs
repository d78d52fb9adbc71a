//! A minimal Docker token server (the `auth.token` protocol distribution speaks).
//!
//! `GET /token?service=..&scope=..&scope=..[&account=..]` with optional Basic credentials answers
//! `{"token","access_token","expires_in","issued_at"}`. The token is a JWT signed ES256; its
//! header carries `x5c` = [the signing key's self-signed certificate], which is also the
//! registry's `auth.token.rootcertbundle`: distribution 2.8 verifies the `x5c` chain against
//! that bundle (it would also accept `kid` = libtrust key id of a bundled key).
//!
//! Grants: a known user with the right password gets every action it asks for; no credentials
//! get `pull` only when `allow_anonymous_pull`, else a token with no access (the registry then
//! answers 401 `insufficient_scope`); wrong credentials get 401 from the token server itself.
//! Plain std threads and blocking sockets keep it independent of the test's runtime.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::util::{now_unix, percent_decode, rfc3339};

/// `service` the registry announces (and the token's `aud`).
pub const TOKEN_SERVICE: &str = "mirrorsync-test-registry";
/// `iss` of issued tokens and the registry's `auth.token.issuer`.
pub const TOKEN_ISSUER: &str = "mirrorsync-test-token-issuer";

/// One request the token server received.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `service` query parameter.
    pub service: Option<String>,
    /// Every `scope` (space-separated values split), in order.
    pub scopes: Vec<String>,
    /// `account` query parameter.
    pub account: Option<String>,
    /// User name from the Basic credentials, if any were sent.
    pub basic_user: Option<String>,
    /// Whether Basic credentials were sent.
    pub had_basic: bool,
    /// Response status (200, or 401 for bad credentials, 404 for another path).
    pub status: u16,
    /// The `access` granted: (name, actions) per repository.
    pub granted: Vec<(String, Vec<String>)>,
    /// The client's User-Agent.
    pub user_agent: String,
}

struct Inner {
    users: Vec<(String, String)>,
    allow_anonymous_pull: bool,
    expires_in: u64,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: SystemRandom,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A running token server on 127.0.0.1 (stopped on drop).
pub struct TokenServer {
    port: u16,
    inner: Arc<Inner>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    dir: TempDir,
}

impl TokenServer {
    /// Starts a server knowing `users` (name, password); tokens live 300 s.
    pub fn start(users: Vec<(String, String)>, allow_anonymous_pull: bool) -> TokenServer {
        Self::start_with_ttl(users, allow_anonymous_pull, 300)
    }

    /// Like [`TokenServer::start`] with a chosen `expires_in` (note distribution allows 60 s
    /// of clock skew on `exp`).
    pub fn start_with_ttl(
        users: Vec<(String, String)>,
        allow_anonymous_pull: bool,
        expires_in: u64,
    ) -> TokenServer {
        let rng = SystemRandom::new();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("token key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("token cert params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mirrorsync test token signer");
        let cert = params.self_signed(&kp).expect("token cert");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &kp.serialize_der(), &rng)
                .expect("ring key");
        let dir = tempfile::Builder::new()
            .prefix("mirrorsync-token-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("token-root.pem"), cert.pem()).expect("write bundle");

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("addr").port();
        let inner = Arc::new(Inner {
            users,
            allow_anonymous_pull,
            expires_in,
            key,
            cert_der: cert.der().to_vec(),
            rng,
            requests: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (inner2, stop2) = (inner.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let inner = inner2.clone();
                    std::thread::spawn(move || handle(&inner, stream));
                }
            }
        });
        TokenServer {
            port,
            inner,
            stop,
            thread: Some(thread),
            dir,
        }
    }

    /// The realm URL for the registry config: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// PEM file with the signing certificate (the registry's `rootcertbundle`).
    pub fn root_cert_bundle(&self) -> PathBuf {
        self.dir.path().join("token-root.pem")
    }

    /// `service` value.
    pub fn service(&self) -> &'static str {
        TOKEN_SERVICE
    }

    /// `issuer` value.
    pub fn issuer(&self) -> &'static str {
        TOKEN_ISSUER
    }

    /// First configured user, the one the harness seeds with.
    pub fn first_user(&self) -> Option<(String, String)> {
        self.inner.users.first().cloned()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.inner
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        if let Ok(mut r) = self.inner.requests.lock() {
            r.clear();
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(inner: &Inner, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65_536 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut req_line = lines.next().unwrap_or("").split(' ');
    let (method, target) = (req_line.next().unwrap_or(""), req_line.next().unwrap_or(""));
    if method.is_empty() {
        return; // wake-up connection or garbage
    }
    let mut auth = None;
    let mut user_agent = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => auth = Some(v.trim().to_string()),
                "user-agent" => user_agent = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let (status, body) = respond(inner, method, target, auth.as_deref(), user_agent);
    let reason = if status == 200 {
        "OK"
    } else if status == 401 {
        "Unauthorized"
    } else {
        "Not Found"
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        head.push_str("WWW-Authenticate: Basic realm=\"mirrorsync-test-token\"\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

fn respond(
    inner: &Inner,
    method: &str,
    target: &str,
    auth: Option<&str>,
    user_agent: String,
) -> (u16, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = TokenRequest {
        service: None,
        scopes: Vec::new(),
        account: None,
        basic_user: None,
        had_basic: false,
        status: 404,
        granted: Vec::new(),
        user_agent,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match percent_decode(k).as_str() {
            "service" => req.service = Some(v),
            "account" => req.account = Some(v),
            "scope" => req
                .scopes
                .extend(v.split(' ').filter(|s| !s.is_empty()).map(String::from)),
            _ => {}
        }
    }
    let user = match auth.and_then(|a| {
        a.strip_prefix("Basic ")
            .or_else(|| a.strip_prefix("basic "))
    }) {
        Some(b64) => {
            req.had_basic = true;
            let decoded = STANDARD
                .decode(b64.trim())
                .ok()
                .map(|d| String::from_utf8_lossy(&d).into_owned());
            let (u, p) = decoded
                .as_deref()
                .and_then(|d| d.split_once(':'))
                .unwrap_or(("", ""));
            req.basic_user = Some(u.to_string());
            if inner.users.iter().any(|(uu, pp)| uu == u && pp == p) {
                Some(u.to_string())
            } else {
                None
            }
        }
        None => None,
    };
    let result = if method != "GET" || path != "/token" {
        (404, r#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_string())
    } else if req.had_basic && user.is_none() {
        (
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.to_string(),
        )
    } else {
        req.granted = grant(&req.scopes, user.is_some(), inner.allow_anonymous_pull);
        let token = sign(
            inner,
            user.as_deref().unwrap_or(""),
            req.service.as_deref(),
            &req.granted,
        );
        let body = json!({
            "token": token,
            "access_token": token,
            "expires_in": inner.expires_in,
            "issued_at": rfc3339(now_unix()),
        });
        (200, body.to_string())
    };
    req.status = result.0;
    if let Ok(mut r) = inner.requests.lock() {
        r.push(req);
    }
    result
}

/// Splits `type:name:actions`; the name may itself contain `:` (host:port).
fn parse_scope(scope: &str) -> Option<(&str, &str, Vec<&str>)> {
    let (typ, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((
        typ,
        name,
        actions.split(',').filter(|a| !a.is_empty()).collect(),
    ))
}

fn grant(scopes: &[String], authenticated: bool, anon_pull: bool) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (typ, name, actions) in scopes.iter().filter_map(|s| parse_scope(s)) {
        if typ != "repository" {
            continue;
        }
        let allowed: Vec<String> = actions
            .iter()
            .filter(|a| authenticated || (anon_pull && **a == "pull"))
            .map(|a| a.to_string())
            .collect();
        if allowed.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, acts)) => {
                for a in allowed {
                    if !acts.contains(&a) {
                        acts.push(a);
                    }
                }
            }
            None => out.push((name.to_string(), allowed)),
        }
    }
    out
}

fn sign(
    inner: &Inner,
    sub: &str,
    service: Option<&str>,
    granted: &[(String, Vec<String>)],
) -> String {
    let now = now_unix();
    let mut jti = [0u8; 16];
    let _ = inner.rng.fill(&mut jti);
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&inner.cert_der)]});
    let access: Vec<Value> = granted
        .iter()
        .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
        .collect();
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": sub,
        "aud": service.unwrap_or(TOKEN_SERVICE),
        "exp": now + inner.expires_in,
        "nbf": now.saturating_sub(10),
        "iat": now.saturating_sub(10),
        "jti": hex::encode(jti),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = inner
        .key
        .sign(&inner.rng, input.as_bytes())
        .expect("ES256 sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}
