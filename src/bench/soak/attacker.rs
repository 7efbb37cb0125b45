//! The attacker of a soak: every chosen attack of [`crate::bench::attack`],
//! each repeated in its own task from the start of the attack phase until
//! the run stops, its answers added up over the rounds.

use std::time::{Duration, Instant};

use super::{AttackKind, SoakConfig, Timeline};
use crate::bench::attack::{
    self, AttackReport, FloodConfig, HalfSentConfig, HogConfig, PartialHelloConfig,
    RoomFloodConfig, TakeoverConfig, Target,
};

/// Every attack, each repeated in its own task from the start of the
/// attack phase until the run stops.
pub(super) async fn attacks(
    config: &SoakConfig,
    target: &Target,
    initials: &[bytes::Bytes],
    timeline: Timeline,
) -> Vec<AttackReport> {
    let Some(attack_at) = timeline.attack else {
        return Vec::new();
    };
    tokio::time::sleep_until(attack_at.into()).await;
    let stop = timeline.stop;
    let left = move || stop.saturating_duration_since(Instant::now());
    let s = |full: f64| config.scaled(full);
    let flood = FloodConfig {
        initials: initials.len(),
        ..FloodConfig::default()
    };
    let rooms = RoomFloodConfig {
        rooms: s(100_000.0),
        ..RoomFloodConfig::default()
    };
    let hog = HogConfig {
        rooms: s(20.0) as usize,
        bytes_per_room: s(64.0 * 1024.0 * 1024.0),
        ..HogConfig::default()
    };
    let half = HalfSentConfig {
        streams: s(100.0) as usize,
        ..HalfSentConfig::default()
    };
    let hellos = PartialHelloConfig {
        connections: s(40.0) as usize,
        ..PartialHelloConfig::default()
    };
    let takeover = TakeoverConfig {
        attempts: s(10.0) as usize,
    };
    let on = |kind: AttackKind, rounds: usize| {
        if config.attacks.contains(&kind) {
            rounds
        } else {
            0
        }
    };
    let (flood_r, rooms_r, hog_r, half_r, hellos_r, takeover_r) = tokio::join!(
        repeat(
            "handshake-flood",
            stop,
            on(AttackKind::HandshakeFlood, usize::MAX),
            |_| { attack::handshake_flood(target, initials, &flood) }
        ),
        repeat(
            "room-flood",
            stop,
            on(AttackKind::RoomFlood, usize::MAX),
            |_| {
                let c = RoomFloodConfig {
                    time_limit: left(),
                    ..rooms.clone()
                };
                async move { attack::room_flood(target, &c).await }
            }
        ),
        repeat("history-hog", stop, on(AttackKind::HistoryHog, 1), |_| {
            let c = HogConfig {
                time_limit: left(),
                ..hog.clone()
            };
            async move { attack::history_hog(target, &c).await }
        }),
        repeat(
            "half-sent-frames",
            stop,
            on(AttackKind::HalfSentFrames, usize::MAX),
            |_| {
                let c = HalfSentConfig {
                    hold: left().min(half.hold),
                    ..half.clone()
                };
                async move { attack::half_sent_frames(target, &c).await }
            }
        ),
        repeat(
            "partial-hellos",
            stop,
            on(AttackKind::PartialHellos, usize::MAX),
            |_| {
                let c = PartialHelloConfig {
                    hold: left().min(hellos.hold),
                    ..hellos.clone()
                };
                async move { attack::partial_hellos(target, &c).await }
            }
        ),
        repeat(
            "session-takeover",
            stop,
            on(AttackKind::SessionTakeover, usize::MAX),
            |_| { attack::session_takeover(target, &takeover) }
        ),
    );
    let mut reports = vec![flood_r, rooms_r, hog_r, half_r, hellos_r, takeover_r];
    reports.retain(|r| config.attacks.iter().any(|k| k.name() == r.name));
    reports
}

/// Runs an attack round after round (at most one a second) until `stop`
/// or `max_rounds`, adding up the answers.
async fn repeat<F, Fut>(name: &str, stop: Instant, max_rounds: usize, mut round: F) -> AttackReport
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<AttackReport, attack::AttackError>>,
{
    let mut total: Option<AttackReport> = None;
    let mut rounds = 0;
    // Bounded by `stop` and `max_rounds`; each round is bounded in time.
    while rounds < max_rounds && Instant::now() + Duration::from_millis(500) < stop {
        let began = Instant::now();
        let report = match round(rounds).await {
            Ok(report) => report,
            Err(e) => {
                let mut failed = AttackReport {
                    name: name.to_string(),
                    rounds: 1,
                    ..AttackReport::default()
                };
                failed.answers.insert(format!("attack failed: {e}"), 1);
                failed
            }
        };
        match total.as_mut() {
            Some(t) => t.merge(&report),
            None => total = Some(report),
        }
        rounds += 1;
        let pause = Duration::from_secs(1).saturating_sub(began.elapsed());
        tokio::time::sleep(pause).await;
    }
    total.unwrap_or_else(|| AttackReport {
        name: name.to_string(),
        ..AttackReport::default()
    })
}
