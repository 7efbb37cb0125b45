//! A small game world for the demo and the game examples: N entities moving
//! on a plane, published 60 times a second as datagram snapshots, with
//! reliable `spawn`, `despawn` and `score` events beside them.
//!
//! The publisher splits a snapshot across as many datagrams as the current
//! datagram limit needs; each part carries the tick and the publisher's
//! wall-clock timestamp, so a subscriber on the same machine can measure how
//! old a snapshot is when it arrives.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError, Delivery, Event, Events};

/// The room every game example uses.
pub const ROOM: &str = "game";
/// Datagram event name of snapshot parts.
pub const SNAPSHOT: &str = "snapshot";
/// Ticks per second.
pub const TICK_HZ: u32 = 60;
/// Side of the square world.
pub const WORLD_SIZE: f32 = 1000.0;

/// One moving thing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub id: u32,
    pub x: f32,
    pub y: f32,
    pub vx: f32,
    pub vy: f32,
}

/// One datagram's share of a tick's snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPart {
    pub tick: u64,
    /// Publisher wall clock, microseconds since the Unix epoch.
    pub sent_at_us: u64,
    pub part: u16,
    pub parts: u16,
    pub entities: Vec<Entity>,
}

/// A reliable game event (event names `spawn`, `despawn`, `score`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum GameEvent {
    Spawn(Entity),
    Despawn { id: u32 },
    Score { id: u32, points: u32 },
}

impl GameEvent {
    /// The event name it is published under.
    pub fn name(&self) -> &'static str {
        match self {
            GameEvent::Spawn(_) => "spawn",
            GameEvent::Despawn { .. } => "despawn",
            GameEvent::Score { .. } => "score",
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The publisher's authoritative world.
pub struct World {
    entities: Vec<Entity>,
    rng: StdRng,
    next_id: u32,
    tick: u64,
}

/// Largest postcard size of one [`Entity`] (a u32 varint and four f32).
const ENTITY_MAX: usize = 5 + 16;
/// Largest postcard size of a [`SnapshotPart`] without its entities.
const PART_HEADER_MAX: usize = 10 + 10 + 3 + 3 + 5;

impl World {
    /// A world of `entities` entities placed by a seeded generator.
    pub fn new(entities: usize, seed: u64) -> Self {
        let mut world = World {
            entities: Vec::with_capacity(entities),
            rng: StdRng::seed_from_u64(seed),
            next_id: 0,
            tick: 0,
        };
        for _ in 0..entities {
            let e = world.random_entity();
            world.entities.push(e);
        }
        world
    }

    fn random_entity(&mut self) -> Entity {
        self.next_id += 1;
        Entity {
            id: self.next_id,
            x: self.rng.random_range(0.0..WORLD_SIZE),
            y: self.rng.random_range(0.0..WORLD_SIZE),
            vx: self.rng.random_range(-100.0..100.0),
            vy: self.rng.random_range(-100.0..100.0),
        }
    }

    /// The current tick number.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// The entities as they are now.
    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    /// Advances one tick: moves and bounces every entity, and now and then
    /// replaces one (despawn + spawn) or scores. Returns the reliable events.
    pub fn step(&mut self) -> Vec<GameEvent> {
        self.tick += 1;
        let dt = 1.0 / TICK_HZ as f32;
        for e in &mut self.entities {
            e.x += e.vx * dt;
            e.y += e.vy * dt;
            if !(0.0..=WORLD_SIZE).contains(&e.x) {
                e.vx = -e.vx;
                e.x = e.x.clamp(0.0, WORLD_SIZE);
            }
            if !(0.0..=WORLD_SIZE).contains(&e.y) {
                e.vy = -e.vy;
                e.y = e.y.clamp(0.0, WORLD_SIZE);
            }
        }
        let mut events = Vec::new();
        if self.entities.is_empty() {
            return events;
        }
        // About once a second an entity leaves and another arrives.
        if self.tick.is_multiple_of(u64::from(TICK_HZ)) {
            let i = self.rng.random_range(0..self.entities.len());
            let gone = self.entities.swap_remove(i);
            events.push(GameEvent::Despawn { id: gone.id });
            let born = self.random_entity();
            self.entities.push(born);
            events.push(GameEvent::Spawn(born));
        }
        // About twice a second someone scores.
        if self.tick.is_multiple_of(u64::from(TICK_HZ / 2)) {
            let i = self.rng.random_range(0..self.entities.len());
            let points = self.rng.random_range(1..=10);
            events.push(GameEvent::Score {
                id: self.entities[i].id,
                points,
            });
        }
        events
    }

    /// The current snapshot, split so that every part's payload fits in
    /// `max_payload` bytes.
    pub fn snapshot_parts(&self, sent_at_us: u64, max_payload: usize) -> Vec<SnapshotPart> {
        let per_part = (max_payload.saturating_sub(PART_HEADER_MAX) / ENTITY_MAX).max(1);
        let chunks: Vec<&[Entity]> = if self.entities.is_empty() {
            vec![&[]]
        } else {
            self.entities.chunks(per_part).collect()
        };
        let parts = chunks.len() as u16;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| SnapshotPart {
                tick: self.tick,
                sent_at_us,
                part: i as u16,
                parts,
                entities: chunk.to_vec(),
            })
            .collect()
    }
}

/// What a publisher sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublisherTotals {
    pub ticks: u64,
    pub datagrams: u64,
    pub reliable: u64,
}

/// Publishes `world` at [`TICK_HZ`] until `duration` has passed (or forever).
pub async fn run_publisher(
    client: &Client,
    world: &mut World,
    duration: Option<Duration>,
) -> Result<PublisherTotals, ClientError> {
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_secs(1) / TICK_HZ);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut totals = PublisherTotals::default();
    while duration.is_none_or(|d| started.elapsed() < d) {
        interval.tick().await;
        for event in world.step() {
            client.emit_typed(ROOM, event.name(), &event).await?;
            totals.reliable += 1;
        }
        let limit = client.max_datagram_payload(ROOM, SNAPSHOT).await?;
        for part in world.snapshot_parts(now_us(), limit) {
            client.emit_datagram_typed(ROOM, SNAPSHOT, &part).await?;
            totals.datagrams += 1;
        }
        totals.ticks += 1;
    }
    Ok(totals)
}

/// The subscriber's copy of the world and its per-second measurements.
pub struct WorldView {
    entities: HashMap<u32, Entity>,
    scores: HashMap<u32, u64>,
    assembling: Option<(u64, u16)>,
    window: Window,
    second: u64,
}

#[derive(Default)]
struct Window {
    snapshots: u64,
    reliable: u64,
    ages: Option<Histogram<u64>>,
}

/// One line of the subscriber's once-a-second report.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondReport {
    pub second: u64,
    /// Complete snapshots (every part of a tick) received in this second.
    pub snapshots: u64,
    /// Datagram sequence numbers skipped since the start (lost or late).
    pub datagrams_lost: u64,
    /// Datagrams dropped as stale since the start.
    pub datagrams_stale: u64,
    /// Reliable events received in this second.
    pub reliable: u64,
    /// Snapshot age when a part arrived, microseconds.
    pub age_p50_us: u64,
    pub age_p99_us: u64,
    /// Entities in the subscriber's world.
    pub entities: usize,
}

impl fmt::Display for SecondReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={:>3}s  snapshots/s {:>3}  datagrams lost {:>5}  stale {:>4}  reliable {:>3}  age p50 {:>7.3} ms  p99 {:>7.3} ms  entities {}",
            self.second,
            self.snapshots,
            self.datagrams_lost,
            self.datagrams_stale,
            self.reliable,
            self.age_p50_us as f64 / 1000.0,
            self.age_p99_us as f64 / 1000.0,
            self.entities
        )
    }
}

impl Default for WorldView {
    fn default() -> Self {
        Self::new()
    }
}

impl WorldView {
    pub fn new() -> Self {
        WorldView {
            entities: HashMap::new(),
            scores: HashMap::new(),
            assembling: None,
            window: Window::default(),
            second: 0,
        }
    }

    /// Entities currently known.
    pub fn entities(&self) -> &HashMap<u32, Entity> {
        &self.entities
    }

    /// Total points per entity id.
    pub fn scores(&self) -> &HashMap<u32, u64> {
        &self.scores
    }

    /// Applies one received event; events of other rooms are ignored.
    pub fn apply(&mut self, event: &Event, now_us: u64) -> Result<(), ClientError> {
        if &*event.room != ROOM {
            return Ok(());
        }
        match event.delivery {
            Delivery::Datagram { .. } if event.name == SNAPSHOT => {
                let part: SnapshotPart = event.decode()?;
                let age = now_us.saturating_sub(part.sent_at_us).max(1);
                let hist = self.window.ages.get_or_insert_with(|| {
                    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
                });
                let _ = hist.record(age.min(60_000_000));
                for e in &part.entities {
                    self.entities.insert(e.id, *e);
                }
                let received = match self.assembling {
                    Some((tick, n)) if tick == part.tick => n + 1,
                    _ => 1,
                };
                self.assembling = Some((part.tick, received));
                if received == part.parts {
                    self.window.snapshots += 1;
                }
            }
            Delivery::Reliable { .. } => {
                self.window.reliable += 1;
                match event.decode::<GameEvent>()? {
                    GameEvent::Spawn(e) => {
                        self.entities.insert(e.id, e);
                    }
                    GameEvent::Despawn { id } => {
                        self.entities.remove(&id);
                    }
                    GameEvent::Score { id, points } => {
                        *self.scores.entry(id).or_default() += u64::from(points);
                    }
                }
            }
            Delivery::Datagram { .. } => {}
        }
        Ok(())
    }

    /// Closes the current one-second window and reports it.
    pub fn report(&mut self, client: &Client) -> SecondReport {
        self.second += 1;
        let stats = client.stats();
        let window = std::mem::take(&mut self.window);
        let (p50, p99) = window
            .ages
            .map(|h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
            .unwrap_or((0, 0));
        SecondReport {
            second: self.second,
            snapshots: window.snapshots,
            datagrams_lost: stats.datagrams_lost,
            datagrams_stale: stats.datagrams_stale,
            reliable: window.reliable,
            age_p50_us: p50,
            age_p99_us: p99,
            entities: self.entities.len(),
        }
    }
}

/// Receives game events for `duration` (or until the connection ends),
/// handing a report to `on_second` once a second.
pub async fn run_subscriber(
    client: &Client,
    events: &mut Events,
    duration: Option<Duration>,
    mut on_second: impl FnMut(&SecondReport),
) -> Result<WorldView, ClientError> {
    let mut view = WorldView::new();
    let started = tokio::time::Instant::now();
    let mut ticker =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let deadline = duration.map(|d| started + d);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => view.apply(&event, now_us())?,
                None => return Err(client.closed().await),
            },
            _ = ticker.tick() => {
                on_second(&view.report(client));
                if deadline.is_some_and(|d| tokio::time::Instant::now() + Duration::from_millis(1) >= d) {
                    return Ok(view);
                }
            }
        }
    }
}

/// A snapshot as the trade-off page reads it (web/tradeoff.js), compact
/// enough that 48 entities fit one datagram: little-endian `u32 tick`,
/// `f64 sent_at_ms` (the publisher's wall clock, ms since the Unix epoch),
/// `u16 n`, then `n` times `u32 id, f32 x, f32 y`. 14 + 12n bytes.
pub fn web_snapshot(tick: u64, sent_at_ms: f64, entities: &[Entity]) -> Vec<u8> {
    let n = entities.len().min(usize::from(u16::MAX));
    let mut out = Vec::with_capacity(WEB_SNAPSHOT_HEADER + WEB_ENTITY * n);
    // The page counts ticks in 32 bits: a 60 Hz world wraps after 2 years.
    out.extend_from_slice(&(tick as u32).to_le_bytes());
    out.extend_from_slice(&sent_at_ms.to_le_bytes());
    out.extend_from_slice(&(n as u16).to_le_bytes());
    for e in &entities[..n] {
        out.extend_from_slice(&e.id.to_le_bytes());
        out.extend_from_slice(&e.x.to_le_bytes());
        out.extend_from_slice(&e.y.to_le_bytes());
    }
    out
}

/// Bytes of [`web_snapshot`]'s header and of each entity in it.
pub const WEB_SNAPSHOT_HEADER: usize = 14;
pub const WEB_ENTITY: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_parts_fit_the_limit_and_cover_every_entity() {
        let world = World::new(500, 7);
        for limit in [200usize, 1_000, 1_200, 1_452, 60_000] {
            let parts = world.snapshot_parts(123, limit);
            let mut ids: Vec<u32> = parts
                .iter()
                .flat_map(|p| p.entities.iter().map(|e| e.id))
                .collect();
            ids.sort_unstable();
            assert_eq!(ids, (1..=500).collect::<Vec<_>>());
            for p in &parts {
                let size = postcard::to_stdvec(p).unwrap().len();
                assert!(size <= limit, "part of {size} bytes over {limit}");
                assert_eq!(p.parts as usize, parts.len());
            }
        }
    }

    #[test]
    fn entities_stay_inside_the_world_and_events_keep_the_count() {
        let mut world = World::new(64, 1);
        let mut spawned = 0;
        let mut despawned = 0;
        for _ in 0..600 {
            for event in world.step() {
                match event {
                    GameEvent::Spawn(_) => spawned += 1,
                    GameEvent::Despawn { .. } => despawned += 1,
                    GameEvent::Score { .. } => {}
                }
            }
            assert!(world
                .entities()
                .iter()
                .all(|e| (0.0..=WORLD_SIZE).contains(&e.x) && (0.0..=WORLD_SIZE).contains(&e.y)));
        }
        assert_eq!((spawned, despawned), (10, 10));
        assert_eq!(world.entities().len(), 64);
        assert_eq!(world.tick(), 600);
    }

    #[test]
    fn a_web_snapshot_is_laid_out_as_the_page_reads_it() {
        let e = Entity {
            id: 7,
            x: 1.5,
            y: 999.0,
            vx: 3.0,
            vy: -3.0,
        };
        let bytes = web_snapshot(0x1_0000_0002, 1234.5, &[e, e]);
        assert_eq!(bytes.len(), WEB_SNAPSHOT_HEADER + 2 * WEB_ENTITY);
        assert_eq!(&bytes[0..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..12], &1234.5f64.to_le_bytes());
        assert_eq!(&bytes[12..14], &2u16.to_le_bytes());
        assert_eq!(&bytes[14..18], &7u32.to_le_bytes());
        assert_eq!(&bytes[18..22], &1.5f32.to_le_bytes());
        assert_eq!(&bytes[22..26], &999.0f32.to_le_bytes());
        assert_eq!(web_snapshot(1, 0.0, &[]).len(), WEB_SNAPSHOT_HEADER);
    }
}
