//! Our own `nats-server -js` processes, on free ports with temporary store
//! directories, for the cluster tests (never the NATS a machine may already
//! run). Debian's `nats-server` package provides the binary; `.ci/run`
//! installs it.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::within;

/// One running `nats-server` with JetStream, killed when dropped.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
}

fn binary() -> &'static str {
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if Path::new(candidate).exists() {
            return candidate;
        }
    }
    "nats-server"
}

/// JetStream on `port` of 127.0.0.1, storing in `store`.
fn base_args(port: u16, store: &Path) -> Vec<String> {
    vec![
        "-js".to_string(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-sd".into(),
        store.display().to_string(),
    ]
}

/// A TCP port nobody listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Nats {
    /// A single NATS server with JetStream storing in `store`.
    pub async fn start(store: &Path) -> Nats {
        let port = free_port();
        Self::spawn(port, base_args(port, store)).await
    }

    /// `count` NATS servers routed into one JetStream cluster, each storing
    /// under `dir`.
    pub async fn cluster(dir: &Path, count: usize) -> Vec<Nats> {
        let routes: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let route_urls: Vec<String> = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let port = free_port();
            let mut args = base_args(port, &dir.join(format!("nats-{i}")));
            args.extend([
                "-n".into(),
                format!("nats-{i}"),
                "--cluster_name".into(),
                "qbtest".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".into(),
                route_urls.join(","),
            ]);
            servers.push(Self::spawn(port, args).await);
        }
        servers
    }

    async fn spawn(port: u16, args: Vec<String>) -> Nats {
        let mut child = Command::new(binary())
            .args(&args)
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server (Debian package nats-server; .ci/run installs it): {e}"
                )
            });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        within("nats-server to be ready", async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("Server is ready") {
                    return;
                }
                seen.push(line);
            }
            panic!("nats-server exited: {seen:#?}");
        })
        .await;
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Nats {
            child: Some(child),
            port,
            args,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL and waits until it is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            within("nats-server to die", child.wait()).await.unwrap();
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill9().await;
        let again = Self::spawn(self.port, self.args.clone()).await;
        *self = again;
    }
}

/// A TCP relay to a NATS server that the test can close (cutting every
/// connection through it at once) and open again: a node behind it loses
/// NATS while everyone else keeps it.
pub struct TcpGate {
    pub port: u16,
    open: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpGate {
    /// A gate on a free port to NATS on `upstream`, open.
    pub async fn start(upstream: u16) -> TcpGate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, state) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = state.clone();
                if !*state.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        TcpGate { port, open, task }
    }

    /// Cuts every connection through the gate and refuses new ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets connections through again.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
