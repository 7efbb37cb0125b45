//! `quicbus serve` as a child process, for tests that kill it (SIGKILL or
//! SIGTERM) and start it again on the same address and data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::within;

/// The `quicbus` binary, killed when dropped.
pub fn quicbus() -> Command {
    let Some(exe) = option_env!("CARGO_BIN_EXE_quicbus") else {
        panic!("these tests need the quicbus binary (the default `bench` feature)");
    };
    let mut cmd = Command::new(exe);
    cmd.kill_on_drop(true).stdin(Stdio::null());
    cmd
}

/// Output of a finished command: status code, stdout, stderr.
pub async fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = within("quicbus command", cmd.output())
        .await
        .expect("spawn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `quicbus serve`.
pub struct ServeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything it wrote to stderr up to "listening".
    pub startup: Vec<String>,
    certs: PathBuf,
    args: Vec<String>,
    /// What it writes to stderr after starting.
    later: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ServeProcess {
    /// Starts `quicbus serve --listen 127.0.0.1:0 --certs DIR/certs` plus
    /// `args` (say, `--data DIR/data`), once it listens.
    pub async fn start(dir: &Path, args: &[&str]) -> ServeProcess {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::spawn(dir.join("certs"), "127.0.0.1:0".parse().unwrap(), args).await
    }

    async fn spawn(certs: PathBuf, listen: SocketAddr, args: Vec<String>) -> ServeProcess {
        let mut child = quicbus()
            .args(["serve", "--listen", &listen.to_string(), "--certs"])
            .arg(&certs)
            .args(&args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (addr, startup) = within("serve to listen", async {
            let mut startup = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("quicbus listening on ") {
                    let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                    return (addr, startup);
                }
                startup.push(line);
            }
            panic!("serve exited without listening: {startup:?}");
        })
        .await;
        // Keep draining stderr so the server never blocks on a full pipe.
        let (tx, later) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        ServeProcess {
            child,
            addr,
            startup,
            certs,
            args,
            later,
        }
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> PathBuf {
        self.certs.join("ca.pem")
    }

    /// Kills it with SIGKILL and waits until it is gone.
    pub async fn kill9(mut self) -> Restartable {
        self.child.start_kill().unwrap();
        within("serve to die", self.child.wait()).await.unwrap();
        self.restartable()
    }

    /// Stops it with SIGTERM (a graceful shutdown) and waits for exit 0.
    pub async fn terminate(mut self) -> Restartable {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = within("serve to stop", self.child.wait()).await.unwrap();
        assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
        self.restartable()
    }

    /// The next line it writes to stderr after starting.
    pub async fn next_stderr_line(&mut self) -> String {
        within("a line on serve's stderr", self.later.recv())
            .await
            .expect("serve's stderr ended")
    }

    fn restartable(self) -> Restartable {
        Restartable {
            certs: self.certs,
            addr: self.addr,
            args: self.args,
        }
    }
}

/// How to start a stopped server again where its clients expect it.
pub struct Restartable {
    certs: PathBuf,
    pub addr: SocketAddr,
    args: Vec<String>,
}

impl Restartable {
    /// Starts it again: same address, certificates and arguments.
    pub async fn start(self) -> ServeProcess {
        ServeProcess::spawn(self.certs, self.addr, self.args).await
    }
}

/// `quicbus sub`, returned once it has joined its rooms.
pub async fn sub(addr: &str, ca: &Path, extra: &[&str]) -> Child {
    let mut child = quicbus()
        .args(["sub", "--server", addr, "--ca"])
        .arg(ca)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sub");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    within("sub to join", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("joined ") {
                return;
            }
        }
        panic!("sub exited before joining");
    })
    .await;
    child
}

pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// Exit 1 with exactly one line on stderr that contains `expected`.
pub fn assert_one_line_failure((code, _, stderr): (i32, String, String), expected: &str) {
    assert_eq!(code, 1, "stderr: {stderr}");
    // Status lines ("joined …") may come first; the failure is one line.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("quicbus: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(errors[0]),
        "{stderr}"
    );
    assert!(
        errors[0].contains(expected),
        "{stderr:?} lacks {expected:?}"
    );
}
