//! Starts a `tally serve` child process for a self-contained benchmark run.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a starting server may take to print its listening line; recovery
/// of a reused `--data-dir` replays the log, so this is generous.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a graceful shutdown may take before the child is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The exact prefix `tally serve` prints on stdout once it accepts requests.
const LISTENING_PREFIX: &str = "listening on ";

/// A running `tally serve` child. Dropping it kills the child (SIGKILL), so an
/// early error never leaves a server behind; `stop` shuts it down gracefully.
pub struct Server {
    child: Child,
    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Keeps a temporary data directory alive until the server is stopped.
    _temp_dir: Option<tempfile::TempDir>,
    pub data_dir: PathBuf,
}

impl Server {
    /// The admin token the server wrote into its data directory on first start, if any.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        let path = self.data_dir.join("admin.token");
        match std::fs::read_to_string(&path) {
            Ok(token) => Ok(Some(token.trim().to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(anyhow::anyhow!("cannot read {}: {error}", path.display())),
        }
    }

    /// Spawns the current executable as `serve` on a loopback port and waits
    /// until it reports that it is listening.
    pub async fn start(data_dir: Option<&Path>, no_auth: bool) -> anyhow::Result<Server> {
        let (temp_dir, data_dir) = match data_dir {
            Some(dir) => (None, dir.to_path_buf()),
            None => {
                let temp = tempfile::Builder::new().prefix("tally-bench-").tempdir()?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        let exe = std::env::current_exe().context("locating the tally executable")?;
        let mut child = Command::new(&exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(no_auth.then_some("--no-auth"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Keep the server's info lines out of the bench output unless the
            // user asked for them.
            .env(
                "TALLY_LOG",
                std::env::var("TALLY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {} serve", exe.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let wait_listening = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.trim().strip_prefix(LISTENING_PREFIX) {
                    return anyhow::Ok(url.to_string());
                }
            }
            bail!("tally serve exited before printing its listening address")
        };
        let url = tokio::time::timeout(SERVER_READY_TIMEOUT, wait_listening)
            .await
            .context("tally serve did not print its listening address in time")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        eprintln!(
            "bench: started tally serve (pid {}) at {url}, data dir {}",
            child.id().unwrap_or(0),
            data_dir.display()
        );
        Ok(Server {
            child,
            url,
            _temp_dir: temp_dir,
            data_dir,
        })
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for a graceful exit, killing the child if it
    /// takes too long.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid we own; no memory is involved.
            let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if rc != 0 {
                bail!(
                    "sending SIGTERM to tally serve: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        match tokio::time::timeout(SERVER_STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "tally serve did not stop within {SERVER_STOP_TIMEOUT:?} of SIGTERM; killed it"
                )
            }
        }
    }
}
