//! Small shared helpers: digests, deterministic data, time, ports.

use std::time::{SystemTime, UNIX_EPOCH};

/// `sha256:<hex>` of `bytes` (ring's SHA-256 is fast even in debug builds).
pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!("sha256:{}", hex::encode(d.as_ref()))
}

/// Incremental SHA-256 producing a `sha256:<hex>` digest.
pub struct Sha256 {
    ctx: ring::digest::Context,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// A fresh hasher.
    pub fn new() -> Self {
        Sha256 {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
    }
    /// `sha256:<hex>`.
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.ctx.finish().as_ref()))
    }
}

/// Deterministic pseudo-random byte stream (splitmix64). The bytes depend only on the seed and
/// the position, whatever sizes the caller reads them in.
pub struct DataGen {
    state: u64,
    pending: [u8; 8],
    pending_len: usize,
}

impl DataGen {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        DataGen {
            state: seed ^ 0x6d69_7272_6f72_7379,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while self.pending_len > 0 && i < buf.len() {
            buf[i] = self.pending[8 - self.pending_len];
            self.pending_len -= 1;
            i += 1;
        }
        let rest = &mut buf[i..];
        let mut chunks = rest.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let w = self.next_word();
            let n = tail.len();
            tail.copy_from_slice(&w[..n]);
            self.pending = w;
            self.pending_len = 8 - n;
        }
    }
}

/// `size` deterministic pseudo-random bytes for `seed` (a test layer). Identical to the bytes
/// [`crate::common::seed::push_big_blob`] streams for the same seed and size.
pub fn layer(seed: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    DataGen::new(seed).fill(&mut v);
    v
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC timestamp (`2024-01-02T03:04:05Z`) for Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A port on 127.0.0.1 that was free a moment ago (bind :0, read it, release it). Callers must
/// cope with losing a race for it (retry).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Makes `cmd`'s process die with the test process (SIGKILL when its parent exits), so a test
/// that is killed outright leaves no server behind.
pub fn dies_with_test(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Percent-decodes a URL query component (`+` is a space).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a `/v2/...` path into (repository, rest-kind) where kind is one of `manifests`,
/// `blobs`, `uploads`, `tags`, and returns the reference (tag/digest/upload id) if any.
/// `None` for `/v2/`, `/v2/_catalog` and anything else.
pub fn parse_v2_path(path: &str) -> Option<(String, &'static str, String)> {
    let p = path.strip_prefix("/v2/")?;
    if let Some(i) = p.find("/blobs/uploads") {
        let rest = p[i + "/blobs/uploads".len()..].trim_start_matches('/');
        return Some((p[..i].to_string(), "uploads", rest.to_string()));
    }
    if let Some(i) = p.rfind("/manifests/") {
        return Some((p[..i].to_string(), "manifests", p[i + 11..].to_string()));
    }
    if let Some(i) = p.rfind("/blobs/") {
        return Some((p[..i].to_string(), "blobs", p[i + 7..].to_string()));
    }
    if let Some(name) = p.strip_suffix("/tags/list") {
        return Some((name.to_string(), "tags", String::new()));
    }
    None
}
