//! Harness for Cairn's end-to-end tests: starts real `cairn` processes, follows their logs,
//! and signals or kills them. The tests themselves are in `tests/*.rs` of the root package,
//! where cargo hands them the path of the freshly built binary.
//!
//! Waits here are liveness bounds (fail instead of hanging forever), never speed assertions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process may take to start or stop before the test gives up on it.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `cairn` process whose stderr is captured line by line.
#[derive(Debug)]
pub struct CairnProcess {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

/// How a harness call failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("process exited before {wanted}; log:\n{log}")]
    Exited { wanted: String, log: String },
    #[error("gave up waiting for {wanted}; log:\n{log}")]
    Timeout { wanted: String, log: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CairnProcess {
    /// Start `bin` with `args`, extra environment `env`, in directory `cwd`.
    pub fn start(
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<CairnProcess, HarnessError> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // A clean environment for Cairn's own variables, so the caller's shell cannot leak in.
        for (k, _) in std::env::vars() {
            if k.starts_with("CAIRN_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| HarnessError::Spawn(bin.display().to_string(), e))?;
        let (tx, rx) = channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                // Read on whatever the bytes are: a reader that stopped would let the pipe
                // fill, and the process would block on its next log line.
                let mut reader = BufReader::new(stderr);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let line = String::from_utf8_lossy(&raw)
                        .trim_end_matches('\n')
                        .to_owned();
                    if let Ok(mut l) = log.lock() {
                        l.push(line.clone());
                    }
                    // Nobody waiting for lines any more is no reason to stop draining.
                    let _ = tx.send(line);
                }
            });
        }
        Ok(CairnProcess {
            child,
            lines: rx,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Wait for a stderr line containing `needle`; returns the line.
    pub fn wait_for_line(&mut self, needle: &str) -> Result<String, HarnessError> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(HarnessError::Timeout {
                        wanted: needle.to_owned(),
                        log: self.log(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(HarnessError::Exited {
                        wanted: needle.to_owned(),
                        log: self.log(),
                    });
                }
            }
        }
    }

    /// Wait until the HTTP listener is up and return its address (from the
    /// `listening on http://ADDR` log line).
    pub fn wait_listening(&mut self) -> Result<SocketAddr, HarnessError> {
        let line = self.wait_for_line("listening on http://")?;
        let addr = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        addr.ok_or_else(|| HarnessError::Timeout {
            wanted: format!("an address in {line:?}"),
            log: self.log(),
        })
    }

    /// Send a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) -> Result<(), HarnessError> {
        let pid = i32::try_from(self.child.id())
            .map_err(|_| std::io::Error::other("pid out of range"))?;
        if kill(pid, signal) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Wait for the process to exit.
    pub fn wait(&mut self) -> Result<ExitStatus, HarnessError> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout {
                    wanted: "exit".into(),
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kill the process hard (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> Result<ExitStatus, HarnessError> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for CairnProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill(2)`.
fn kill(pid: i32, signal: i32) -> i32 {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, signal)
    }
}

/// Run `bin` to completion with `args` and environment `env`; returns (status, stdout, stderr).
pub fn run(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
) -> Result<(ExitStatus, String, String), HarnessError> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .map_err(|e| HarnessError::Spawn(bin.display().to_string(), e))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A tmpfs mounted for a test (it needs root), unmounted (lazily) when dropped: a disk that can
/// be filled to its last byte, or room in memory for data the real disk has no space for.
#[derive(Debug)]
pub struct Tmpfs {
    at: std::path::PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=`, e.g. `1g`) at `at`, creating it; an error
    /// says why that cannot be done here.
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| format!("create {}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount tmpfs on {}: {}",
                at.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { at: at.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).output();
    }
}
