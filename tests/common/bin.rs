//! Running the binary under test (and other tools) as child processes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Default time limit for one run of the binary under test.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Result of a child process.
#[derive(Clone, Debug)]
pub struct Output {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Stdout, lossily decoded.
    pub stdout: String,
    /// Stdout, exact bytes.
    pub stdout_raw: Vec<u8>,
    /// Stderr, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Panics with both streams unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Output {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// The `FAILED` line of `repo_tag` (`repo:tag` as the source names it); panics with both
/// streams when there is none.
pub fn failed_line<'a>(out: &'a Output, repo_tag: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with("FAILED ") && l.contains(&format!("/{repo_tag} -> ")))
        .unwrap_or_else(|| {
            panic!(
                "{repo_tag} did not fail\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.stdout, out.stderr
            )
        })
}

/// The mirrorsync binary: `CARGO_BIN_EXE_mirrorsync` when built as the crate's integration test,
/// else `/work/main/target/debug/mirrorsync`.
pub fn bin_path() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_mirrorsync") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("/work/main/target/debug/mirrorsync"),
    }
}

/// Runs mirrorsync with `args` (limit [`RUN_TIMEOUT`]).
pub async fn mirrorsync(args: &[&str]) -> Output {
    mirrorsync_with_env(args, &[]).await
}

/// `mirrorsync sync --once --config <config> --metrics-file <metrics>`.
pub async fn sync_once_with_metrics_file(config: &Path, metrics: &Path) -> Output {
    mirrorsync(&[
        "sync",
        "--once",
        "--config",
        &config.display().to_string(),
        "--metrics-file",
        &metrics.display().to_string(),
    ])
    .await
}

/// Runs mirrorsync with `args` and extra environment variables.
pub async fn mirrorsync_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_with(&bin_path(), args, env, RUN_TIMEOUT).await
}

/// Runs `program` with a time limit; on timeout the child is killed and the test panics.
pub async fn run_with(
    program: impl AsRef<Path>,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Output {
    let program = program.as_ref();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let fut = cmd.output();
    let out = match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("spawn {}: {e}", program.display())),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => panic!("{} {args:?} ran longer than {limit:?}", program.display()),
    };
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stdout_raw: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs mirrorsync and measures its peak RSS in KiB as the OS saw it (`wait4` `ru_maxrss`).
pub async fn run_measured(args: &[&str]) -> (Output, u64) {
    run_measured_with_env(args, &[]).await
}

/// [`run_measured`] with extra environment variables. No time limit beyond the test's own.
pub async fn run_measured_with_env(args: &[&str], env: &[(&str, &str)]) -> (Output, u64) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    measure_program(bin_path(), &args, &env).await
}

/// Runs any `program` and returns its output and peak RSS in KiB (`wait4` `ru_maxrss`).
pub async fn measure_program(
    program: PathBuf,
    args: &[String],
    env: &[(String, String)],
) -> (Output, u64) {
    let (args, env) = (args.to_vec(), env.to_vec());
    tokio::task::spawn_blocking(move || measured_blocking(&program, &args, &env))
        .await
        .expect("run_measured thread")
}

fn measured_blocking(program: &Path, args: &[String], env: &[(String, String)]) -> (Output, u64) {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let pid = child.id() as libc::pid_t;
    let mut so = child.stdout.take().expect("stdout pipe");
    let mut se = child.stderr.take().expect("stderr pipe");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child `pid`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: valid pointers to locals; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    // `child` was reaped by wait4: dropping it does not wait or kill.
    drop(child);
    let stdout_raw = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    let code = if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else {
        None
    };
    let out = Output {
        code,
        stdout: String::from_utf8_lossy(&stdout_raw).into_owned(),
        stdout_raw,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    // Linux reports ru_maxrss in KiB.
    (out, ru.ru_maxrss as u64)
}

/// Writes `yaml` to `dir/sync.yaml` and returns the path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let p = dir.join("sync.yaml");
    std::fs::write(&p, yaml).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// `mirrorsync <args>` running with stdout and stderr piped; killed on drop.
pub fn spawn_mirrorsync(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(bin_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mirrorsync")
}

/// Sends SIGTERM to a child that is still running.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("pid") as libc::pid_t;
    // SAFETY: `pid` is our own running child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// Waits up to `limit` for `child` to exit (panics with `what` otherwise); its output.
pub async fn wait_output(child: tokio::process::Child, limit: Duration, what: &str) -> Output {
    let raw = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect(what)
        .expect("wait");
    Output {
        code: raw.status.code(),
        stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
        stdout_raw: raw.stdout,
        stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
    }
}

/// Every non-empty line of `stderr` parsed as a JSON object (panics on the first that is not):
/// what `--log-format json` promises.
pub fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("not a JSON line ({e}): {l:?}\n--- stderr ---\n{stderr}")
            });
            assert!(v.is_object(), "not a JSON object: {l}");
            v
        })
        .collect()
}
