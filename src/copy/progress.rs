//! Live progress on a terminal: tags done, bytes/s, and the biggest transfer with its ETA.
//! Drawn on stderr, only when it is a terminal and logs are text; never in CronJob logs.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::report::human_bytes;

/// Shared counters the engine updates and the renderer reads.
#[derive(Default)]
pub struct Progress {
    pub tags_total: AtomicUsize,
    pub tags_done: AtomicUsize,
    pub bytes: AtomicU64,
    transfers: std::sync::Mutex<HashMap<u64, Transfer>>,
    next_id: AtomicU64,
}

struct Transfer {
    label: String,
    size: u64,
    received: Arc<AtomicU64>,
    started: Instant,
}

/// A transfer being shown; it disappears when dropped.
pub struct TransferGuard {
    progress: Arc<Progress>,
    id: u64,
    pub received: Arc<AtomicU64>,
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.progress.transfers.lock() {
            t.remove(&self.id);
        }
    }
}

impl Progress {
    /// Registers a blob transfer of `size` bytes.
    pub fn transfer(self: &Arc<Self>, label: String, size: u64) -> TransferGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let received = Arc::new(AtomicU64::new(0));
        if let Ok(mut t) = self.transfers.lock() {
            t.insert(
                id,
                Transfer {
                    label,
                    size,
                    received: Arc::clone(&received),
                    started: Instant::now(),
                },
            );
        }
        TransferGuard {
            progress: Arc::clone(self),
            id,
            received,
        }
    }

    fn line(&self, started: Instant) -> String {
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let mut line = format!(
            "[{}/{} tags] {} copied, {}/s",
            self.tags_done.load(Ordering::Relaxed),
            self.tags_total.load(Ordering::Relaxed),
            human_bytes(bytes),
            human_bytes((bytes as f64 / elapsed) as u64)
        );
        if let Ok(transfers) = self.transfers.lock() {
            if let Some(t) = transfers.values().max_by_key(|t| t.size) {
                let got = t.received.load(Ordering::Relaxed);
                let rate = got as f64 / t.started.elapsed().as_secs_f64().max(0.001);
                let eta = if rate > 0.0 {
                    format!(
                        "{}s",
                        ((t.size.saturating_sub(got)) as f64 / rate).ceil() as u64
                    )
                } else {
                    "?".into()
                };
                line.push_str(&format!(
                    " | {} {}/{} {}/s ETA {eta}",
                    t.label,
                    human_bytes(got),
                    human_bytes(t.size),
                    human_bytes(rate as u64)
                ));
            }
            if transfers.len() > 1 {
                line.push_str(&format!(" (+{} more)", transfers.len() - 1));
            }
        }
        line
    }
}

/// Draws the progress line every half second until dropped; a no-op unless stderr is a
/// terminal and `enabled`.
pub struct Renderer {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Renderer {
    pub fn start(progress: Arc<Progress>, enabled: bool) -> Renderer {
        if !enabled || !std::io::stderr().is_terminal() {
            return Renderer { task: None };
        }
        let started = Instant::now();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let line = progress.line(started);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            }
        });
        Renderer { task: Some(task) }
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}
