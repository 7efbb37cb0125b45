//! The socket side of netsim: a task reading the listen socket, one task
//! per mapping reading its upstream socket, one sender per direction that
//! sleeps until its lane's next packet is due, and the outage schedule.
//! Locks are plain mutexes, never held across an `.await`.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::sync::lock;

use super::impair::{Direction, Impairment};
use super::lane::{Admission, Lane, Queued};
use super::{
    BlackholeSchedule, DirectionStats, NetsimConfig, NetsimError, NetsimStats, MAX_DATAGRAM,
    QUEUE_BYTES, QUEUE_PACKETS,
};

/// Where a queued packet goes.
#[derive(Clone)]
enum Target {
    /// Up: the client's own socket, connected to the server.
    Upstream(Arc<UdpSocket>),
    /// Down: this client address, from the listen socket.
    Client(SocketAddr),
}

/// One client address and its upstream socket.
struct Mapping {
    /// Order of first packet; selects the mapping's random streams.
    index: u64,
    client: SocketAddr,
    socket: Arc<UdpSocket>,
    /// Milliseconds since the proxy started, at the last packet either way.
    last_active: AtomicU64,
}

struct Mapped {
    mapping: Arc<Mapping>,
    reader: JoinHandle<()>,
}

#[derive(Default)]
struct Mappings {
    by_client: HashMap<SocketAddr, Mapped>,
    next_index: u64,
}

struct Counters {
    /// Woken on every count, so that `NetsimHandle::wait_for` waits on the
    /// counters themselves instead of polling them.
    changed: Arc<Notify>,
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_blackhole: AtomicU64,
    dropped_overflow: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    send_failed: AtomicU64,
}

impl Counters {
    fn new(changed: Arc<Notify>) -> Self {
        Counters {
            changed,
            received: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            dropped_loss: AtomicU64::new(0),
            dropped_blackhole: AtomicU64::new(0),
            dropped_overflow: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            send_failed: AtomicU64::new(0),
        }
    }

    fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStats {
            received: get(&self.received),
            forwarded: get(&self.forwarded),
            dropped_loss: get(&self.dropped_loss),
            dropped_blackhole: get(&self.dropped_blackhole),
            dropped_overflow: get(&self.dropped_overflow),
            duplicated: get(&self.duplicated),
            reordered: get(&self.reordered),
            send_failed: get(&self.send_failed),
        }
    }
}

/// One direction: its lane, the wake-up of its sender, its counters.
struct Way {
    lane: Mutex<Lane<Target>>,
    ready: Notify,
    counters: Counters,
}

pub(crate) struct Shared {
    listen: UdpSocket,
    upstream: SocketAddr,
    ways: [Way; 2],
    blackhole: AtomicBool,
    mappings: Mutex<Mappings>,
    clients_refused: AtomicU64,
    /// Woken whenever a counter changes.
    pub(crate) changed: Arc<Notify>,
    max_clients: usize,
    client_idle: Duration,
    started: Instant,
    /// One receive buffer shared by every mapping's reader (each copies
    /// out before its next `.await`), instead of 64 KiB per mapping.
    down_buf: Mutex<Box<[u8]>>,
}

/// A proxy whose tasks are running.
pub(crate) struct Started {
    pub shared: Arc<Shared>,
    pub tasks: Vec<JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

/// Binds the listen socket and spawns the listener, both senders and the
/// outage schedule.
pub(crate) async fn start(config: &NetsimConfig) -> Result<Started, NetsimError> {
    let bind_error = |source| NetsimError::Bind {
        addr: config.listen,
        source,
    };
    let listen = UdpSocket::bind(config.listen).await.map_err(bind_error)?;
    let local_addr = listen.local_addr().map_err(bind_error)?;
    let changed = Arc::new(Notify::new());
    let way = |direction, impairment| Way {
        lane: Mutex::new(Lane::new(
            direction,
            config.seed,
            impairment,
            QUEUE_PACKETS,
            QUEUE_BYTES,
        )),
        ready: Notify::new(),
        counters: Counters::new(changed.clone()),
    };
    let shared = Arc::new(Shared {
        listen,
        upstream: config.upstream,
        ways: [
            way(Direction::Up, config.up),
            way(Direction::Down, config.down),
        ],
        blackhole: AtomicBool::new(false),
        mappings: Mutex::default(),
        clients_refused: AtomicU64::new(0),
        changed,
        max_clients: config.max_clients,
        client_idle: config.client_idle,
        started: Instant::now(),
        down_buf: Mutex::new(vec![0; MAX_DATAGRAM].into_boxed_slice()),
    });
    let mut tasks = vec![
        tokio::spawn(listen_clients(shared.clone())),
        tokio::spawn(send_due(shared.clone(), Direction::Up)),
        tokio::spawn(send_due(shared.clone(), Direction::Down)),
    ];
    if let Some(schedule) = config.blackhole {
        tasks.push(tokio::spawn(outages(shared.clone(), schedule)));
    }
    Ok(Started {
        shared,
        tasks,
        local_addr,
    })
}

impl Shared {
    pub(crate) fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }

    pub(crate) fn blackholed(&self) -> bool {
        self.blackhole.load(Ordering::SeqCst)
    }

    pub(crate) fn set_impairment(&self, up: Impairment, down: Impairment) {
        lock(&self.ways[0].lane).set_impairment(up);
        lock(&self.ways[1].lane).set_impairment(down);
    }

    pub(crate) fn stats(&self) -> NetsimStats {
        NetsimStats {
            up: self.ways[0].counters.snapshot(),
            down: self.ways[1].counters.snapshot(),
            clients: lock(&self.mappings).by_client.len() as u64,
            clients_refused: self.clients_refused.load(Ordering::Relaxed),
        }
    }

    /// Removes every mapping, stopping its reader; returns the readers.
    pub(crate) fn close_mappings(&self) -> Vec<JoinHandle<()>> {
        let mut mappings = lock(&self.mappings);
        mappings
            .by_client
            .drain()
            .map(|(_, m)| {
                m.reader.abort();
                m.reader
            })
            .collect()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts, then drops (blackhole) or admits a packet into its lane.
    fn admit(&self, direction: Direction, mapping: &Mapping, dest: Target, payload: Bytes) {
        mapping.last_active.store(self.now_ms(), Ordering::Relaxed);
        let way = &self.ways[direction as usize];
        let c = &way.counters;
        c.add(&c.received, 1);
        if self.blackholed() {
            c.add(&c.dropped_blackhole, 1);
            return;
        }
        let admission = lock(&way.lane).admit(mapping.index, Instant::now(), dest, payload);
        match admission {
            Admission::Lost => c.add(&c.dropped_loss, 1),
            Admission::Overflow => c.add(&c.dropped_overflow, 1),
            Admission::Queued { duplicated, held } => {
                c.add(&c.duplicated, u64::from(duplicated));
                c.add(&c.reordered, u64::from(held));
                way.ready.notify_one();
            }
        }
    }

    /// The mapping of `client`, created (with its reader task) on its first
    /// packet; `None` when the table is full or no socket can be made.
    fn mapping_for(self: &Arc<Self>, client: SocketAddr) -> Option<Arc<Mapping>> {
        let mut mappings = lock(&self.mappings);
        if let Some(m) = mappings.by_client.get(&client) {
            return Some(m.mapping.clone());
        }
        if mappings.by_client.len() >= self.max_clients {
            self.expire_idle(&mut mappings);
            if mappings.by_client.len() >= self.max_clients {
                return None;
            }
        }
        let socket = match upstream_socket(self.upstream) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!("netsim: no upstream socket for {client}: {e}");
                return None;
            }
        };
        let mapping = Arc::new(Mapping {
            index: mappings.next_index,
            client,
            socket,
            last_active: AtomicU64::new(self.now_ms()),
        });
        mappings.next_index += 1;
        let reader = tokio::spawn(read_upstream(self.clone(), mapping.clone()));
        tracing::debug!("netsim: client {client} is mapping {}", mapping.index);
        mappings.by_client.insert(
            client,
            Mapped {
                mapping: mapping.clone(),
                reader,
            },
        );
        self.changed.notify_waiters();
        Some(mapping)
    }

    fn expire_idle(&self, mappings: &mut Mappings) {
        let (now, idle) = (self.now_ms(), self.client_idle.as_millis());
        mappings.by_client.retain(|client, m| {
            let quiet = now.saturating_sub(m.mapping.last_active.load(Ordering::Relaxed));
            if u128::from(quiet) < idle {
                return true;
            }
            tracing::debug!("netsim: mapping {} of {client} expired", m.mapping.index);
            m.reader.abort();
            for way in &self.ways {
                lock(&way.lane).forget(m.mapping.index);
            }
            false
        });
        // The number of clients is part of the stats.
        self.changed.notify_waiters();
    }
}

/// A socket of the upstream's address family, connected to it, so that
/// only the server's packets come back on it.
fn upstream_socket(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(upstream)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Receives client packets and expires idle mappings.
async fn listen_clients(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let period = (shared.client_idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut sweep = tokio::time::interval(period);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = shared.listen.recv_from(&mut buf) => match received {
                Ok((n, client)) => match shared.mapping_for(client) {
                    Some(mapping) => {
                        let dest = Target::Upstream(mapping.socket.clone());
                        let payload = Bytes::copy_from_slice(&buf[..n]);
                        shared.admit(Direction::Up, &mapping, dest, payload);
                    }
                    None => {
                        shared.clients_refused.fetch_add(1, Ordering::Relaxed);
                        shared.changed.notify_waiters();
                    }
                },
                // E.g. an ICMP error reported late; the socket still works.
                Err(e) => tracing::debug!("netsim: receive from clients: {e}"),
            },
            _ = sweep.tick() => shared.expire_idle(&mut lock(&shared.mappings)),
        }
    }
}

/// Receives the server's packets for one mapping.
async fn read_upstream(shared: Arc<Shared>, mapping: Arc<Mapping>) {
    loop {
        if let Err(e) = mapping.socket.readable().await {
            tracing::debug!("netsim: mapping {} socket: {e}", mapping.index);
            return;
        }
        let received = {
            let mut buf = lock(&shared.down_buf);
            match mapping.socket.try_recv(&mut buf) {
                Ok(n) => Some(Bytes::copy_from_slice(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                // Connection refused (ICMP) and the like: the server is not
                // there yet; keep the mapping.
                Err(e) => {
                    tracing::debug!("netsim: receive from upstream: {e}");
                    None
                }
            }
        };
        if let Some(payload) = received {
            let dest = Target::Client(mapping.client);
            shared.admit(Direction::Down, &mapping, dest, payload);
        }
    }
}

/// Sends one direction's packets when they are due.
async fn send_due(shared: Arc<Shared>, direction: Direction) {
    let way = &shared.ways[direction as usize];
    let c = &way.counters;
    let mut due: Vec<Queued<Target>> = Vec::new();
    loop {
        let next = {
            let mut lane = lock(&way.lane);
            lane.pop_due(Instant::now(), &mut due);
            lane.next_due()
        };
        for packet in due.drain(..) {
            let copies = u64::from(packet.copies);
            if shared.blackholed() {
                c.add(&c.dropped_blackhole, copies);
                continue;
            }
            for _ in 0..copies {
                let sent = match &packet.dest {
                    Target::Upstream(socket) => socket.send(&packet.payload).await,
                    Target::Client(addr) => shared.listen.send_to(&packet.payload, *addr).await,
                };
                match sent {
                    Ok(_) => c.add(&c.forwarded, 1),
                    Err(e) => {
                        tracing::debug!("netsim: send: {e}");
                        c.add(&c.send_failed, 1);
                    }
                }
            }
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = way.ready.notified() => {}
                }
            }
            None => way.ready.notified().await,
        }
    }
}

/// Switches the blackhole on `every`, for `duration`, starting `every` from now.
async fn outages(shared: Arc<Shared>, schedule: BlackholeSchedule) {
    let start = tokio::time::Instant::now() + schedule.every;
    let mut ticks = tokio::time::interval_at(start, schedule.every);
    loop {
        ticks.tick().await;
        tracing::info!("netsim: blackhole on for {:?}", schedule.duration);
        shared.set_blackhole(true);
        tokio::time::sleep(schedule.duration).await;
        shared.set_blackhole(false);
        tracing::info!("netsim: blackhole off");
    }
}
