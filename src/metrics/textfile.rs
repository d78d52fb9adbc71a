//! The node-exporter textfile of a `sync --once` run.

use std::path::Path;

/// Writes a node-exporter textfile atomically with [`crate::atomic_file::write`]: its temporary
/// file starts with `.` and does not end in `.prom`, so the collector ignores it. Readers see the
/// old or the new content, never a part; no temporary file is left behind on error.
pub fn write_textfile(path: &Path, body: &str) -> std::io::Result<()> {
    crate::atomic_file::write(path, body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn textfile_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirrorsync.prom");
        write_textfile(&path, "old 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old 1\n");

        // A reader that keeps reading while a writer replaces the file sees only whole files.
        let big_a = "a 1\n".repeat(50_000);
        let big_b = "b 2\n".repeat(60_000);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let path = path.clone();
            let stop = stop.clone();
            let (a, b) = (big_a.clone(), big_b.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = std::fs::read_to_string(&path).unwrap();
                    assert!(
                        got == "old 1\n" || got == a || got == b,
                        "partial file of {} bytes",
                        got.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..20 {
            write_textfile(&path, if i % 2 == 0 { &big_a } else { &big_b }).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), big_b);

        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["mirrorsync.prom".to_string()]);

        // A missing directory is an error naming the path.
        let err = write_textfile(&dir.path().join("nope/x.prom"), "x 1\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
