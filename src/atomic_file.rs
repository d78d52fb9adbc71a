//! Files replaced all at once: a reader sees the old content or the new, never a part.
//!
//! [`write`] writes a temporary file in the same directory, syncs it, renames it over the
//! destination and syncs the directory so the rename survives a crash. On any error the
//! temporary file is removed. Used by the OCI layout target, the layout's state file and the
//! metrics textfile.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh hidden name next to `path`: `.<name>.<pid>.<n>.tmp`. Unique within the process
/// (a counter) and between processes (the pid).
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// The directory a path's file lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename in `dir` durable. Not every file system lets a directory be opened for
/// this, so a failure to open it is not an error.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Replaces `path` with `bytes` atomically and durably. Errors name the file and the step.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.file_name().is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        ));
    }
    let tmp = temp_path(path);
    let step = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
        }
    };
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(step("creating", &tmp))?;
        file.write_all(bytes).map_err(step("writing", &tmp))?;
        file.sync_all().map_err(step("syncing", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(step("renaming to", path))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent_dir(path));
    Ok(())
}

/// [`write`] off the async runtime's threads.
pub async fn write_async(path: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write(&path, &bytes))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces_leaving_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write(&path, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
        assert_eq!(entries(dir.path()), vec!["state.json"]);
    }

    #[test]
    fn a_failed_rename_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The destination is a non-empty directory: the rename fails after the temp file was
        // written and synced.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        let err = write(&path, b"new").unwrap_err();
        assert!(err.to_string().contains("renaming to"), "{err}");
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(entries(dir.path()), vec!["taken"]);
        assert_eq!(entries(&path), vec!["inside"]);
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("file");
        let err = write(&path, b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(err.to_string().contains("creating"), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn temp_names_are_hidden_distinct_and_in_the_same_directory() {
        let path = Path::new("/some/dir/index.json");
        let a = temp_path(path);
        let b = temp_path(path);
        assert_ne!(a, b);
        assert_eq!(a.parent(), path.parent());
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".index.json.") && name.ends_with(".tmp"),
            "{name}"
        );
    }

    #[tokio::test]
    async fn async_write_is_the_same_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.prom");
        write_async(&path, b"a 1\n".to_vec()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 1\n");
        assert_eq!(entries(dir.path()), vec!["metrics.prom"]);
    }
}
