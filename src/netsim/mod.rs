//! netsim: a seeded UDP impairment proxy, so loss, delay and outages can be
//! shown and tested on one machine where the kernel offers no netem.
//!
//! ```text
//! client ──▶ listen socket ──up lane──▶ one upstream socket per client ──▶ server
//! client ◀── listen socket ◀──down lane── one upstream socket per client ◀── server
//! ```
//!
//! Each client address gets its own upstream socket (a *mapping*), so the
//! server sees distinct clients. Each direction is a `lane`: the pure
//! part that decides every packet's fate with a seeded RNG per mapping and
//! direction and queues survivors by departure time, bounded. The socket
//! tasks in `proxy` only receive, admit and send what is due.

mod impair;
mod lane;
mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use impair::{Impairment, ImpairmentError, MAX_DELAY};

/// Largest datagram carried (the UDP limit).
pub const MAX_DATAGRAM: usize = 65_535;
/// Packets waiting in one direction's delay queue before new ones are dropped.
pub const QUEUE_PACKETS: usize = 8192;
/// Bytes waiting in one direction's delay queue before new ones are dropped.
pub const QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// Periodic outages: starting `every` after start, then every `every`,
/// every packet in both directions is dropped for `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlackholeSchedule {
    /// Time from the start of one outage to the start of the next.
    pub every: Duration,
    /// How long each outage lasts; shorter than `every`.
    pub duration: Duration,
}

/// Proxy settings; [`NetsimConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct NetsimConfig {
    /// Where clients send their packets.
    pub listen: SocketAddr,
    /// The server packets are forwarded to.
    pub upstream: SocketAddr,
    /// Impairment of client → server packets.
    pub up: Impairment,
    /// Impairment of server → client packets.
    pub down: Impairment,
    /// Seed of every random decision; the same seed and traffic repeat them.
    pub seed: u64,
    /// Periodic outages, if any.
    pub blackhole: Option<BlackholeSchedule>,
    /// Most client mappings at once; packets of further clients are dropped.
    pub max_clients: usize,
    /// A mapping with no packet in either direction for this long expires.
    pub client_idle: Duration,
}

impl NetsimConfig {
    /// No impairment, seed 0, no outages, 1024 clients, 60 s idle expiry.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        NetsimConfig {
            listen,
            upstream,
            up: Impairment::default(),
            down: Impairment::default(),
            seed: 0,
            blackhole: None,
            max_clients: 1024,
            client_idle: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<(), NetsimError> {
        self.up.validate().map_err(NetsimError::Up)?;
        self.down.validate().map_err(NetsimError::Down)?;
        if let Some(s) = self.blackhole {
            if s.duration.is_zero() || s.duration >= s.every || s.every > MAX_DELAY {
                return Err(NetsimError::Blackhole(s));
            }
        }
        if self.max_clients == 0 {
            return Err(NetsimError::NoClients);
        }
        if self.client_idle.is_zero() {
            return Err(NetsimError::ClientIdle);
        }
        Ok(())
    }
}

/// Why the proxy could not start or take a setting.
#[derive(Debug, thiserror::Error)]
pub enum NetsimError {
    /// The client → server impairment is invalid.
    #[error("up: {0}")]
    Up(ImpairmentError),
    /// The server → client impairment is invalid.
    #[error("down: {0}")]
    Down(ImpairmentError),
    /// An outage must be nonzero and shorter than its period (at most an hour).
    #[error("blackhole of {:?} every {:?}: it must be nonzero and shorter than its period (at most {MAX_DELAY:?})", .0.duration, .0.every)]
    Blackhole(BlackholeSchedule),
    /// `max_clients` is zero.
    #[error("max_clients must be at least 1")]
    NoClients,
    /// `client_idle` is zero.
    #[error("client_idle must be longer than zero")]
    ClientIdle,
    /// The listen socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Packets received from the sending side (of known or new mappings).
    pub received: u64,
    /// Datagrams sent on, duplicates included.
    pub forwarded: u64,
    /// Dropped by the loss setting.
    pub dropped_loss: u64,
    /// Dropped while the blackhole was on (on arrival or when due to leave).
    pub dropped_blackhole: u64,
    /// Dropped because the delay queue was full.
    pub dropped_overflow: u64,
    /// Packets sent twice.
    pub duplicated: u64,
    /// Packets held back to leave after a later one.
    pub reordered: u64,
    /// Sends the operating system refused (e.g. nobody listening).
    pub send_failed: u64,
}

/// Counters of the whole proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetsimStats {
    /// Client → server.
    pub up: DirectionStats,
    /// Server → client.
    pub down: DirectionStats,
    /// Live client mappings.
    pub clients: u64,
    /// Packets of new clients dropped: `max_clients` reached, or no socket.
    pub clients_refused: u64,
}

/// Starts proxies.
#[derive(Debug)]
pub struct Netsim {
    _private: (),
}

impl Netsim {
    /// Binds `config.listen` and runs the proxy in background tasks until
    /// the handle is shut down or dropped.
    pub async fn start(config: NetsimConfig) -> Result<NetsimHandle, NetsimError> {
        config.validate()?;
        let started = proxy::start(&config).await?;
        Ok(NetsimHandle {
            local_addr: started.local_addr,
            shared: started.shared,
            tasks: started.tasks,
        })
    }
}

/// A running proxy; dropping it stops the proxy too.
pub struct NetsimHandle {
    local_addr: SocketAddr,
    shared: Arc<proxy::Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl NetsimHandle {
    /// The address clients send to (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// While on, every packet in both directions is dropped and counted.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.set_blackhole(on);
    }

    /// Whether the blackhole is on.
    pub fn blackholed(&self) -> bool {
        self.shared.blackholed()
    }

    /// Changes both impairments; packets already queued keep their fate.
    pub fn set_impairment(&self, up: Impairment, down: Impairment) -> Result<(), NetsimError> {
        up.validate().map_err(NetsimError::Up)?;
        down.validate().map_err(NetsimError::Down)?;
        self.shared.set_impairment(up, down);
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> NetsimStats {
        self.shared.stats()
    }

    /// Waits (without polling) until the counters satisfy `cond`. Bound it
    /// with a timeout: it waits as long as `cond` stays false.
    pub async fn wait_for(&self, cond: impl Fn(&NetsimStats) -> bool) -> NetsimStats {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let stats = self.shared.stats();
            if cond(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    /// Stops the proxy and waits until its sockets are closed. Packets
    /// still queued are dropped.
    pub async fn shutdown(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        for reader in self.shared.close_mappings() {
            let _ = reader.await;
        }
    }
}

impl Drop for NetsimHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        drop(self.shared.close_mappings());
    }
}

impl std::fmt::Debug for NetsimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetsimHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}
