//! The blob spool of a run with several targets: a blob that one of them needs crosses the
//! upstream link once, into a file, and every target that needs it reads that file at its own
//! pace, while it is still being written.
//!
//! The download is a task of its own, paced by the upstream link and not by any target: a slow
//! target reads behind, a target that is down never reads, and neither holds the others back.
//! What this costs is disk, bounded by `spool_size`: a blob is deleted once every target has
//! settled it (copied, mounted, found present, or given up on), and when a new blob would not
//! fit, the oldest complete blobs no target is reading are deleted first. A blob that still
//! does not fit is not spooled: each target that needs it streams it from upstream itself.
//! The spool directory is removed when the run ends.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::reference::Digest;
use crate::verify::VerifiedStream;

/// Bytes read from a spool file at a time.
const READ_PIECE: usize = 256 * 1024;

/// How far a blob's download has come: bytes written in this attempt (a new attempt, from
/// the next source after a mirror failed, starts again at 0 with the next `attempt`).
#[derive(Debug, Clone, PartialEq)]
enum Fill {
    Writing { attempt: u32, written: u64 },
    Done,
    Failed(String),
}

/// One blob in the spool.
struct Entry {
    path: PathBuf,
    size: u64,
    fill: watch::Sender<Fill>,
    /// Targets (by index) that are done with this blob.
    settled: Mutex<Vec<bool>>,
    /// Readers open now: a blob being read is never evicted.
    readers: AtomicUsize,
}

impl Entry {
    fn done(&self) -> bool {
        *self.fill.borrow() == Fill::Done
    }
}

#[derive(Default)]
struct Shelf {
    entries: HashMap<Digest, Arc<Entry>>,
    /// Bytes reserved by the entries.
    used: u64,
    /// Digests in the order they were added (eviction looks at the oldest first).
    order: VecDeque<Digest>,
}

enum Reserved {
    Existing(Arc<Entry>),
    New(Arc<Entry>),
    NoRoom,
}

/// The spool of one run.
pub struct Spool {
    dir: PathBuf,
    limit: u64,
    targets: usize,
    shelf: Mutex<Shelf>,
    /// Blobs that did not fit (or found `spool_dir` unwritable) and were streamed by each
    /// target on its own.
    pub(super) overflowed: AtomicUsize,
    /// `spool_dir` could not be written (said once).
    unusable: std::sync::atomic::AtomicBool,
}

/// Where a download writes a blob: the spool file, and the readers following it.
pub struct SpoolWriter {
    entry: Arc<Entry>,
    file: tokio::fs::File,
    attempt: u32,
    written: u64,
}

impl SpoolWriter {
    /// Appends verified-so-far bytes and wakes the readers.
    pub async fn write(&mut self, piece: &Bytes) -> Result<(), String> {
        // `flush` waits until the bytes are in the file: readers are told the new length next,
        // and tokio's `write_all` returns once its own buffer has them.
        let written = async {
            self.file.write_all(piece).await?;
            self.file.flush().await
        }
        .await;
        written.map_err(|e| format!("spool file {}: {e}", self.entry.path.display()))?;
        self.written += piece.len() as u64;
        let (attempt, written) = (self.attempt, self.written);
        self.entry
            .fill
            .send_replace(Fill::Writing { attempt, written });
        Ok(())
    }

    /// Starts over (the next source): readers of the last attempt fail and read again.
    pub async fn restart(&mut self) -> Result<(), String> {
        let path = self.entry.path.display().to_string();
        self.file
            .set_len(0)
            .await
            .map_err(|e| format!("spool file {path}: {e}"))?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| format!("spool file {path}: {e}"))?;
        self.attempt += 1;
        self.written = 0;
        self.entry.fill.send_replace(Fill::Writing {
            attempt: self.attempt,
            written: 0,
        });
        Ok(())
    }
}

impl Spool {
    /// A spool under `parent` (created on first use), holding at most `limit` bytes, for a
    /// run over `targets` targets.
    pub fn new(parent: &Path, limit: u64, targets: usize) -> Spool {
        let dir = parent.join(format!("mirrorsync-spool-{}", std::process::id()));
        Spool {
            dir,
            limit,
            targets,
            shelf: Mutex::default(),
            overflowed: AtomicUsize::new(0),
            unusable: Default::default(),
        }
    }

    fn shelf(&self) -> MutexGuard<'_, Shelf> {
        self.shelf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reader of `digest`, with `download` started when no target asked for it before:
    /// `None` when the blob does not fit in the spool (the caller streams it itself).
    pub async fn open<F, Fut>(
        self: &Arc<Self>,
        digest: &Digest,
        size: u64,
        download: F,
    ) -> Result<Option<VerifiedStream>, String>
    where
        F: FnOnce(SpoolWriter) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let entry = match self.reserve(digest, size) {
            Reserved::Existing(entry) => entry,
            Reserved::NoRoom => {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            Reserved::New(entry) => {
                let file = match self.create(&entry.path).await {
                    Ok(file) => file,
                    Err(e) => {
                        entry.fill.send_replace(Fill::Failed(e.clone()));
                        self.remove(digest);
                        if !self.unusable.swap(true, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "cannot write to spool_dir: each target pulls its blobs on its own this run");
                        }
                        self.overflowed.fetch_add(1, Ordering::Relaxed);
                        return Ok(None);
                    }
                };
                let writer = SpoolWriter {
                    entry: Arc::clone(&entry),
                    file,
                    attempt: 0,
                    written: 0,
                };
                let run = download(writer);
                let (spool, digest) = (Arc::clone(self), digest.clone());
                let fill = entry.fill.clone();
                tokio::spawn(async move {
                    match run.await {
                        Ok(()) => {
                            fill.send_replace(Fill::Done);
                            spool.tidy(&digest);
                        }
                        Err(e) => {
                            fill.send_replace(Fill::Failed(e));
                            // A later need starts a new download.
                            spool.remove(&digest);
                        }
                    }
                });
                entry
            }
        };
        Ok(Some(reader(entry, digest.clone())))
    }

    async fn create(&self, path: &Path) -> Result<tokio::fs::File, String> {
        async {
            tokio::fs::create_dir_all(&self.dir).await?;
            tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .await
        }
        .await
        .map_err(|e| format!("spool file {}: {e}", path.display()))
    }

    /// The blob's entry when a target asked for it before; else room for it (evicting complete
    /// blobs no target reads, oldest first) and a new entry, or no room.
    fn reserve(&self, digest: &Digest, size: u64) -> Reserved {
        let mut evicted = Vec::new();
        let reserved = {
            let mut shelf = self.shelf();
            if let Some(entry) = shelf.entries.get(digest) {
                return Reserved::Existing(Arc::clone(entry));
            }
            while shelf.used + size > self.limit {
                let Some(i) = shelf.order.iter().position(|d| {
                    shelf
                        .entries
                        .get(d)
                        .is_some_and(|e| e.done() && e.readers.load(Ordering::Relaxed) == 0)
                }) else {
                    break;
                };
                let Some(d) = shelf.order.remove(i) else {
                    break;
                };
                if let Some(e) = shelf.entries.remove(&d) {
                    shelf.used -= e.size;
                    evicted.push(e.path.clone());
                }
            }
            if shelf.used + size > self.limit {
                Reserved::NoRoom
            } else {
                let entry = Arc::new(Entry {
                    path: self.dir.join(digest.encoded()),
                    size,
                    fill: watch::Sender::new(Fill::Writing {
                        attempt: 0,
                        written: 0,
                    }),
                    settled: Mutex::new(vec![false; self.targets]),
                    readers: AtomicUsize::new(0),
                });
                shelf.used += size;
                shelf.entries.insert(digest.clone(), Arc::clone(&entry));
                shelf.order.push_back(digest.clone());
                Reserved::New(entry)
            }
        };
        for path in evicted {
            tracing::debug!(file = %path.display(), "spool full: a blob no target is reading was deleted");
            let _ = std::fs::remove_file(&path);
        }
        reserved
    }

    /// Drops a blob from the spool (its download failed, or every target settled it).
    fn remove(&self, digest: &Digest) {
        let removed = {
            let mut shelf = self.shelf();
            let removed = shelf.entries.remove(digest);
            if let Some(e) = &removed {
                shelf.used -= e.size;
                shelf.order.retain(|d| d != digest);
            }
            removed
        };
        if let Some(e) = removed {
            let _ = std::fs::remove_file(&e.path);
        }
    }

    /// Target `index` is done with `digest`; the file goes once every target is.
    pub fn settle(&self, digest: &Digest, index: usize) {
        let Some(entry) = self.shelf().entries.get(digest).cloned() else {
            return;
        };
        if let Some(s) = entry
            .settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(index)
        {
            *s = true;
        }
        self.tidy(digest);
    }

    /// Deletes a complete blob every target has settled and none is reading.
    fn tidy(&self, digest: &Digest) {
        let Some(entry) = self.shelf().entries.get(digest).cloned() else {
            return;
        };
        let all = entry
            .settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(|s| *s);
        if all && entry.done() && entry.readers.load(Ordering::Relaxed) == 0 {
            self.remove(digest);
        }
    }

    /// Target `index` finished its run: it needs nothing more from the spool.
    pub fn finish(&self, index: usize) {
        let digests: Vec<Digest> = self.shelf().entries.keys().cloned().collect();
        for digest in digests {
            self.settle(&digest, index);
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A reader that follows the file while it is written; verified again against the digest.
fn reader(entry: Arc<Entry>, digest: Digest) -> VerifiedStream {
    entry.readers.fetch_add(1, Ordering::Relaxed);
    let size = entry.size;
    let state = ReadState {
        guard: ReaderGuard(Arc::clone(&entry)),
        fill: entry.fill.subscribe(),
        file: None,
        offset: 0,
        attempt: None,
    };
    let body: BoxStream<'static, Result<Bytes, String>> =
        futures_util::stream::unfold(state, |mut st| async move {
            match st.next().await {
                Ok(Some(piece)) => Some((Ok(piece), st)),
                Ok(None) => None,
                Err(e) => {
                    st.offset = u64::MAX;
                    Some((Err(e), st))
                }
            }
        })
        .boxed();
    VerifiedStream::new(body, digest, size)
}

struct ReaderGuard(Arc<Entry>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

struct ReadState {
    guard: ReaderGuard,
    fill: watch::Receiver<Fill>,
    file: Option<tokio::fs::File>,
    offset: u64,
    /// The download attempt this reader follows.
    attempt: Option<u32>,
}

impl ReadState {
    /// The next piece, waiting for the writer when it is ahead of us.
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        let entry = Arc::clone(&self.guard.0);
        if self.offset == u64::MAX {
            return Ok(None);
        }
        loop {
            let fill = self.fill.borrow_and_update().clone();
            let available = match fill {
                Fill::Failed(e) => return Err(format!("download for the spool failed: {e}")),
                Fill::Done => entry.size,
                Fill::Writing { attempt, written } => {
                    if *self.attempt.get_or_insert(attempt) != attempt {
                        return Err(
                            "the download started over from another source; reading again".into(),
                        );
                    }
                    written
                }
            };
            if self.offset < available {
                return self.read(&entry, available).await.map(Some);
            }
            if matches!(fill, Fill::Done) {
                return Ok(None);
            }
            if self.fill.changed().await.is_err() {
                return Err("the spool download ended without finishing".into());
            }
        }
    }

    async fn read(&mut self, entry: &Entry, available: u64) -> Result<Bytes, String> {
        let failed = |e: std::io::Error| format!("spool file {}: {e}", entry.path.display());
        if self.file.is_none() {
            let mut file = tokio::fs::File::open(&entry.path).await.map_err(failed)?;
            file.seek(std::io::SeekFrom::Start(self.offset))
                .await
                .map_err(failed)?;
            self.file = Some(file);
        }
        let want = (available - self.offset).min(READ_PIECE as u64) as usize;
        let mut buf = vec![0; want];
        let file = self.file.as_mut().ok_or("spool file not open")?;
        file.read_exact(&mut buf).await.map_err(failed)?;
        self.offset += want as u64;
        Ok(Bytes::from(buf))
    }
}
