//! A `quicbus serve` child process to measure: its CPU time and memory are
//! its own, read from `/proc`, and it opens its data directory as a real
//! deployment does.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::attack::Target;
use super::scratch::ScratchDir;
use super::BenchError;
use quicbus::client::{ClientOptions, Trust};

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The `quicbus` executable.
    pub exe: PathBuf,
    /// `serve --worker-threads`.
    pub worker_threads: usize,
    /// `serve --data DIR`; `None` runs it with `--memory`.
    pub data: Option<PathBuf>,
    /// More arguments of `serve` (history bounds, fsync policy).
    pub extra: Vec<String>,
    /// How long it may take to say it listens (opening a large data
    /// directory takes a while).
    pub ready_timeout: Duration,
}

impl ServeOptions {
    pub fn new(exe: PathBuf) -> Self {
        ServeOptions {
            exe,
            worker_threads: 0,
            data: None,
            extra: Vec::new(),
            ready_timeout: Duration::from_secs(10),
        }
    }
}

/// What every benchmark's `serve` gets: all its clients come from
/// 127.0.0.1 and publish as fast as they are asked to, so the per-address
/// and rate defences would measure themselves, not the relay (`bench
/// attack` and `bench soak --attack` measure the per-connection ones).
/// Options in `ServeOptions::extra` come later and win.
pub const LIFTED_DEFENCES: [&str; 8] = [
    "--max-connections-per-ip",
    "0",
    "--max-joined-rooms-per-ip",
    "0",
    "--handshake-rate-per-ip",
    "0",
    "--publish-rate",
    "0",
];

/// A `quicbus serve` child process on a free loopback port, with its own
/// development certificates in a scratch directory. Killed when dropped.
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    /// From the start of the process to its "listening" line.
    ready_after: Duration,
    certs: ScratchDir,
}

impl ServerProcess {
    pub fn start(options: &ServeOptions) -> Result<Self, BenchError> {
        let certs = ScratchDir::new("certs")?;
        let mut command = Command::new(&options.exe);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--certs")
            .arg(certs.path())
            .args(["--worker-threads", &options.worker_threads.to_string()])
            // Every benchmark client comes from 127.0.0.1 and publishes as
            // fast as it is asked to: the per-address and rate defences
            // would measure themselves, not the relay. (`bench soak
            // --attack` measures them.) Options in `extra` come later and win.
            .args([
                "--max-connections-per-ip",
                "0",
                "--max-joined-rooms-per-ip",
                "0",
            ])
            .args(["--handshake-rate-per-ip", "0", "--publish-rate", "0"]);
        match &options.data {
            Some(dir) => command.arg("--data").arg(dir),
            None => command.arg("--memory"),
        };
        let started = Instant::now();
        let mut child = command
            .args(&options.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(BenchError::io(format!(
                "starting {} serve",
                options.exe.display()
            )))?;
        let addr = match listening_addr(&mut child, options.ready_timeout) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(ServerProcess {
            child,
            addr,
            ready_after: started.elapsed(),
            certs,
        })
    }

    /// How long the process took from its start to listening: for a
    /// durable server, mostly opening (and verifying) its data directory.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Client options that reach and trust this server and never reconnect
    /// (a benchmark reports a lost connection instead of hiding it).
    pub fn client_options(&self) -> ClientOptions {
        let mut options = ClientOptions::new(self.addr);
        options.trust = Trust::CaFile(self.certs.path().join("ca.pem"));
        options.client_name = "quicbus-bench".into();
        options.connect_timeout = Duration::from_secs(30);
        options.reconnect = None;
        options
    }

    /// The server as the attacks of `attack.rs` aim at it.
    pub fn attack_target(&self) -> Result<Target, BenchError> {
        let path = self.certs.path().join("ca.pem");
        let ca_pem = std::fs::read_to_string(&path)
            .map_err(BenchError::io(format!("reading {}", path.display())))?;
        Ok(Target {
            addr: self.addr,
            ca_pem,
        })
    }

    /// Resident memory now, bytes.
    pub fn rss(&self) -> Result<u64, BenchError> {
        self.status_kb("VmRSS:")
    }

    /// The most resident memory so far, bytes.
    pub fn peak_rss(&self) -> Result<u64, BenchError> {
        self.status_kb("VmHWM:")
    }

    fn status_kb(&self, field: &str) -> Result<u64, BenchError> {
        let status = proc_file(self.child.id(), "status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| BenchError::Other(format!("no {field} in the server's /proc status")))
    }

    /// User + system CPU time so far, seconds.
    pub fn cpu_seconds(&self) -> Result<f64, BenchError> {
        let stat = proc_file(self.child.id(), "stat")?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line, in clock ticks of 1/100 s.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| BenchError::Other("unreadable /proc stat".into()))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64, BenchError> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| BenchError::Other("unreadable /proc stat".into()))
        };
        Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_file(pid: u32, name: &str) -> Result<String, BenchError> {
    let path = Path::new("/proc").join(pid.to_string()).join(name);
    std::fs::read_to_string(&path).map_err(BenchError::io(format!(
        "reading {} (the server's CPU and memory are read from /proc, Linux only)",
        path.display()
    )))
}

/// Reads the child's stderr until its "listening on ADDR" line.
fn listening_addr(child: &mut Child, timeout: Duration) -> Result<SocketAddr, BenchError> {
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| BenchError::Other("the server's stderr is not piped".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    // The reader keeps draining stderr for the server's life, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(sender) = tx.as_ref() {
                if let Some(addr) = line
                    .strip_prefix("quicbus listening on ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = sender.send(Ok(addr));
                    tx = None;
                } else if line.starts_with("error") {
                    let _ = sender.send(Err(line));
                }
            }
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(addr)) => Ok(addr),
        Ok(Err(line)) => Err(BenchError::Other(format!("the server failed: {line}"))),
        Err(_) => Err(BenchError::Other(format!(
            "the server did not report its address within {timeout:?}"
        ))),
    }
}
