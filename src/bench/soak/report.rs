//! What a soak reports: the JSON object and the table, made from what the
//! crowd counted, the bystander measured and the attacks were answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::bystander::Measured;
use super::checks::Tally;
use super::{SoakConfig, Timeline, ATTACK_P99_LIMIT, RSS_GROWTH_LIMIT_PCT};
use crate::bench::attack::AttackReport;
use crate::bench::{ratio, Percentiles};

/// One sample of the server's resident memory.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssSample {
    /// Seconds since the start of the run.
    pub t_s: f64,
    pub bytes: u64,
}

/// The bystander's relay p99 of one second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SecondP99 {
    /// Seconds since the start of the run.
    pub t_s: u64,
    pub p99_us: u64,
    pub messages: u64,
}

/// A whole soak: the JSON object and the table.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// `soak` or `soak-attack`.
    pub name: String,
    pub clients: usize,
    pub rooms: usize,
    pub rooms_per_client: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub attack: bool,
    /// Where the server kept history: `disk` (fsync `interval`) or `memory`.
    pub storage: String,
    /// Arguments given to `serve` beyond the bench's own.
    pub serve_args: Vec<String>,

    /// Failures of well-behaved clients: a missing, duplicate or
    /// out-of-order reliable event, a failed join or emit, an unexpected
    /// close. Must be 0.
    pub errors: u64,
    /// The first few of them.
    pub error_samples: Vec<String>,
    /// Reliable events published and acked.
    pub reliable_published: u64,
    /// Reliable events received, summed over subscribers.
    pub reliable_delivered: u64,
    /// Reliable events a subscriber never got (gaps and what never came).
    pub reliable_missing: u64,
    pub reliable_duplicates: u64,
    pub reliable_out_of_order: u64,
    /// Every subscriber got every event of its rooms, once and in order.
    pub delivery_complete: bool,
    pub datagrams_sent: u64,
    /// Datagrams not sent because the client was disconnected (flaky
    /// clients during outages).
    pub datagrams_unsent: u64,
    pub datagrams_received: u64,
    /// Datagram sequence numbers subscribers found skipped.
    pub datagrams_lost: u64,
    /// `lost / (received + lost)`, percent.
    pub datagram_loss_pct: f64,
    pub joins: u64,
    /// Rejoins after a leave or a new session, with the missed events replayed.
    pub rejoins: u64,
    /// Events replayed on those rejoins and on resumes.
    pub replayed: u64,
    /// New sessions (close, connect, rejoin from the last offset).
    pub renewals: u64,
    /// Connections tried again (at the start, and for new sessions) after
    /// the server turned a handshake away or a path was dark.
    pub connect_retries: u64,
    /// Why, for the first few of them.
    pub connect_retry_samples: Vec<String>,
    /// Operations of flaky clients tried again because their connection
    /// was lost under them (as an application would).
    pub retries: u64,
    /// Connections lost to an outage of a flaky path...
    pub disconnects: u64,
    /// ... and sessions resumed after them.
    pub resumes: u64,
    pub outages: u64,

    /// The server's resident memory at the end of warm-up, at the end of
    /// the clean phase, at the end, and at its peak.
    pub rss_warmup_bytes: u64,
    pub rss_clean_end_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_peak_bytes: u64,
    /// `(end − warm-up) / warm-up`, percent.
    pub rss_growth_pct: f64,
    /// `(end of clean phase − warm-up) / warm-up`, percent (the same as
    /// `rss_growth_pct` without `--attack`).
    pub rss_clean_growth_pct: f64,
    /// Growth over the second half of the clean phase, percent of the
    /// value at its start: near 0 once memory has settled, whatever the
    /// warm-up left to grow.
    pub rss_settled_growth_pct: f64,
    pub rss: Vec<RssSample>,
    /// Server CPU time (user + system) over the run.
    pub server_cpu_s: f64,

    /// The bystander's relay messages sent and back, over the whole run;
    /// its latency in the clean phase and under attack.
    pub relay_sent: u64,
    pub relay_received: u64,
    pub relay_clean: Percentiles,
    pub relay_attack: Option<Percentiles>,
    /// `relay_attack.p99 / relay_clean.p99`.
    pub attack_p99_vs_clean: Option<f64>,
    pub relay_p99_per_second: Vec<SecondP99>,
    /// The raw-UDP echo in the same run.
    pub udp_p50_us: u64,
    pub udp_p99_us: u64,
    pub relay_clean_p50_vs_udp: f64,
    pub relay_clean_p99_vs_udp: f64,

    /// What each attack tried and what the server answered.
    pub attacks: Vec<AttackReport>,

    /// The criteria of issue 9: growth under 5%, no errors, nothing lost,
    /// and (with attacks) the bystander's p99 within 2× its clean p99.
    pub rss_growth_ok: bool,
    pub errors_ok: bool,
    pub attack_p99_ok: Option<bool>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_report(
    config: &SoakConfig,
    timeline: &Timeline,
    rss: Vec<RssSample>,
    tally: &Tally,
    mut measured: Measured,
    attacks: Vec<AttackReport>,
    (udp_p50, udp_p99): (u64, u64),
    cpu: f64,
) -> SoakReport {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for e in measured.errors.drain(..) {
        tally.error(e);
    }
    let since = |at: Instant| at.duration_since(timeline.start).as_secs_f64();
    let at_or_after = |t: f64| {
        rss.iter()
            .find(|s| s.t_s >= t)
            .or(rss.last())
            .map_or(0, |s| s.bytes)
    };
    let rss_warmup = at_or_after(since(timeline.warmed));
    let rss_end = rss.last().map_or(0, |s| s.bytes);
    let rss_clean_end = match timeline.attack {
        Some(at) => rss
            .iter()
            .rev()
            .find(|s| s.t_s <= since(at))
            .map_or(rss_end, |s| s.bytes),
        None => rss_end,
    };
    let growth_from = |from: u64, to: u64| {
        if from == 0 {
            0.0
        } else {
            ((to as f64 - from as f64) / from as f64 * 1000.0).round() / 10.0
        }
    };
    let growth = |to: u64| growth_from(rss_warmup, to);
    let clean_end = timeline.attack.unwrap_or(timeline.stop);
    let settled_from = at_or_after(since(timeline.warmed + (clean_end - timeline.warmed) / 2));
    let clean = Percentiles::of(&measured.clean);
    let attack = timeline.attack.map(|_| Percentiles::of(&measured.attack));
    let attack_ratio = attack.map(|a| ratio2(a.p99_us, clean.p99_us));
    let (received, lost) = (get(&tally.datagrams_received), get(&tally.datagrams_lost));
    let errors = get(&tally.errors);
    let missing = get(&tally.missing);
    let (duplicates, out_of_order) = (get(&tally.duplicates), get(&tally.out_of_order));
    let rss_growth_pct = growth(rss_end);
    let rss_clean_growth_pct = growth(rss_clean_end);
    SoakReport {
        name: if config.attack { "soak-attack" } else { "soak" }.into(),
        clients: config.clients,
        rooms: config.rooms,
        rooms_per_client: config.rooms_per_client,
        duration_s: config.duration.as_secs_f64(),
        warmup_s: config.warmup.as_secs_f64(),
        attack: config.attack,
        storage: config.storage.name().into(),
        serve_args: config.serve_args.clone(),
        errors,
        error_samples: tally
            .error_samples
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        reliable_published: get(&tally.published),
        reliable_delivered: get(&tally.delivered),
        reliable_missing: missing,
        reliable_duplicates: duplicates,
        reliable_out_of_order: out_of_order,
        delivery_complete: missing == 0 && duplicates == 0 && out_of_order == 0,
        datagrams_sent: get(&tally.datagrams_sent),
        datagrams_unsent: get(&tally.datagrams_unsent),
        datagrams_received: received,
        datagrams_lost: lost,
        datagram_loss_pct: if received + lost == 0 {
            0.0
        } else {
            (lost as f64 * 10_000.0 / (received + lost) as f64).round() / 100.0
        },
        joins: get(&tally.joins),
        rejoins: get(&tally.rejoins),
        replayed: get(&tally.replayed),
        renewals: get(&tally.renewals),
        retries: get(&tally.retries),
        connect_retries: get(&tally.connect_retries),
        connect_retry_samples: tally
            .connect_retry_samples
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        disconnects: get(&tally.disconnects),
        resumes: get(&tally.resumes),
        outages: get(&tally.outages),
        rss_warmup_bytes: rss_warmup,
        rss_clean_end_bytes: rss_clean_end,
        rss_end_bytes: rss_end,
        rss_peak_bytes: rss.iter().map(|s| s.bytes).max().unwrap_or(0),
        rss_growth_pct,
        rss_clean_growth_pct,
        rss_settled_growth_pct: growth_from(settled_from, rss_clean_end),
        rss,
        server_cpu_s: (cpu * 100.0).round() / 100.0,
        relay_sent: measured.sent,
        relay_received: measured.received,
        relay_clean: clean,
        relay_attack: attack,
        attack_p99_vs_clean: attack_ratio,
        relay_p99_per_second: measured
            .per_second
            .iter()
            .map(|(&t_s, h)| SecondP99 {
                t_s,
                p99_us: h.value_at_quantile(0.99),
                messages: h.len(),
            })
            .collect(),
        udp_p50_us: udp_p50,
        udp_p99_us: udp_p99,
        relay_clean_p50_vs_udp: ratio(clean.p50_us, udp_p50),
        relay_clean_p99_vs_udp: ratio(clean.p99_us, udp_p50),
        attacks,
        rss_growth_ok: rss_clean_growth_pct < RSS_GROWTH_LIMIT_PCT,
        errors_ok: errors == 0,
        attack_p99_ok: attack_ratio.map(|r| r <= ATTACK_P99_LIMIT),
    }
}

/// `value / base` to two decimals; 0 without a base.
fn ratio2(value: u64, base: u64) -> f64 {
    if base == 0 {
        return 0.0;
    }
    (value as f64 / base as f64 * 100.0).round() / 100.0
}
