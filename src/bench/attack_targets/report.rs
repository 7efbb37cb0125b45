//! What `bench attack` reports: the JSON object, each target's verdict,
//! and the table.

use std::time::Duration;

use serde::Serialize;

use crate::bench::attack::AttackReport;

/// A whole run: one JSON object, and the table.
#[derive(Debug, Clone, Serialize)]
pub struct AttackTargetsReport {
    pub name: String,
    pub machine: String,
    /// What every server was started with (`quicbus serve ...`).
    pub serve_flags: String,
    /// `disk` (a temporary data directory, fsync `interval`) or `memory`.
    pub storage: String,
    pub attack_scale: f64,
    /// The raw-UDP echo on loopback in the same run (the machine's floor).
    pub udp_p50_us: u64,
    pub udp_p99_us: u64,
    /// One per attack, in the order run.
    pub targets: Vec<TargetResult>,
    /// Whether every target was met.
    pub all_ok: bool,
}

/// One attack against its own server, and its target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    /// `handshake-flood`, `room-flood`, `half-sent-frames` or `partial-hellos`.
    pub attack: String,
    /// What is measured, in words.
    pub measure: String,
    /// `ms` or `KiB`.
    pub unit: String,
    pub limit: f64,
    /// The figure held against the limit (the worst probe, or the RSS growth).
    pub measured: f64,
    /// Within the limit, and every probe succeeded.
    pub ok: bool,
    /// The bystander's tries (handshake and room floods), in order.
    pub probes: Vec<Probe>,
    /// Median of the successful probes, ms (0 without any).
    pub probe_p50_ms: f64,
    pub probes_failed: u64,
    /// The server's RSS settled before the attack, at its peak while the
    /// attack ran, and the difference.
    pub rss_baseline_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_growth_bytes: u64,
    /// Streams (half-sent frames) or connections (partial Hellos) the
    /// attack opened on the server: what the RSS growth is shared by.
    pub opened: u64,
    /// What the attack tried and what the server answered.
    pub attack_report: AttackReport,
}

/// One try of the bystander.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// From the start of the attack, ms.
    pub at_ms: f64,
    /// How long it took, ms (up to the failure, if it failed).
    pub took_ms: f64,
    /// Whether the attack was still running when it started.
    pub during_attack: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

pub(super) fn probe_result(
    attack: &str,
    measure: String,
    limit: Duration,
    probes: Vec<Probe>,
    (baseline, peak): (u64, u64),
    attack_report: AttackReport,
) -> TargetResult {
    let mut took: Vec<f64> = probes
        .iter()
        .filter(|p| p.error.is_none())
        .map(|p| p.took_ms)
        .collect();
    took.sort_by(f64::total_cmp);
    let failed = probes.iter().filter(|p| p.error.is_some()).count() as u64;
    let measured = took.last().copied().unwrap_or(0.0);
    let limit_ms = ms(limit);
    TargetResult {
        attack: attack.into(),
        measure,
        unit: "ms".into(),
        limit: limit_ms,
        measured,
        ok: failed == 0 && !took.is_empty() && measured <= limit_ms,
        probe_p50_ms: took.get(took.len() / 2).copied().unwrap_or(0.0),
        probes_failed: failed,
        probes,
        rss_baseline_bytes: baseline,
        rss_peak_bytes: peak,
        rss_growth_bytes: peak.saturating_sub(baseline),
        opened: 0,
        attack_report,
    }
}

pub(super) fn rss_result(
    attack: &str,
    measure: String,
    limit: u64,
    measured: u64,
    opened: u64,
    (baseline, peak): (u64, u64),
    attack_report: AttackReport,
) -> TargetResult {
    TargetResult {
        attack: attack.into(),
        measure,
        unit: "KiB".into(),
        limit: kib(limit),
        measured: kib(measured),
        ok: measured <= limit,
        probes: Vec::new(),
        probe_p50_ms: 0.0,
        probes_failed: 0,
        rss_baseline_bytes: baseline,
        rss_peak_bytes: peak,
        rss_growth_bytes: peak.saturating_sub(baseline),
        opened,
        attack_report,
    }
}

impl AttackTargetsReport {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = format!(
            "quicbus attack targets (issue 9): attack scale {}, history {}\nmachine: {}\n\
             server: quicbus serve {}\n  (per-address limits off: every client here is \
             127.0.0.1; the per-connection defences are what is measured)\n\n",
            self.attack_scale,
            if self.storage == "memory" {
                "in memory"
            } else {
                "on disk"
            },
            self.machine,
            self.serve_flags
        );
        out += &format!(
            "{:<17} {:<57} {:>12} {:>12}  {}\n",
            "attack", "target", "limit", "measured", "verdict"
        );
        for t in &self.targets {
            out += &format!(
                "{:<17} {:<57} {:>12} {:>12}  {}\n",
                t.attack,
                t.measure,
                format!("≤ {} {}", fmt_value(t.limit), t.unit),
                format!("{} {}", fmt_value(t.measured), t.unit),
                verdict(t.ok)
            );
        }
        out += "\n";
        for t in &self.targets {
            out += &format!("{}:\n", t.attack);
            if !t.probes.is_empty() {
                let list: Vec<String> = t
                    .probes
                    .iter()
                    .map(|p| match &p.error {
                        None => fmt_value(p.took_ms),
                        Some(e) => format!("FAILED ({e})"),
                    })
                    .collect();
                let during = t.probes.iter().filter(|p| p.during_attack).count();
                out += &format!(
                    "  probes (ms; {during} during the attack, {} after): {}\n  p50 {} ms, \
                     max {} ms, {} failed\n",
                    t.probes.len() - during,
                    list.join(", "),
                    fmt_value(t.probe_p50_ms),
                    fmt_value(t.measured),
                    t.probes_failed
                );
            }
            out += &format!(
                "  server RSS {:.1} MiB settled, {:.1} MiB at the peak ({:+.0} KiB{})\n",
                mib(t.rss_baseline_bytes),
                mib(t.rss_peak_bytes),
                kib(t.rss_growth_bytes),
                if t.opened > 0 {
                    let what = if t.attack == "half-sent-frames" {
                        "streams"
                    } else {
                        "connections"
                    };
                    format!(" over {} {what}", t.opened)
                } else {
                    String::new()
                }
            );
            out += &format!(
                "  attack ({:.1} s): {}\n",
                t.attack_report.elapsed_ms as f64 / 1000.0,
                t.attack_report.summary()
            );
        }
        out += &format!(
            "\nraw UDP echo in the same run: p50 {} µs, p99 {} µs\n{} of {} targets met",
            self.udp_p50_us,
            self.udp_p99_us,
            self.targets.iter().filter(|t| t.ok).count(),
            self.targets.len()
        );
        out
    }
}

pub(super) fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAILED"
    }
}

/// Up to two decimals, fewer for large values.
pub(super) fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

fn kib(bytes: u64) -> f64 {
    (bytes as f64 / 1024.0 * 10.0).round() / 10.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::attack_targets::PARTIAL_HELLO_RSS_LIMIT;

    fn probe(took_ms: f64, error: Option<&str>) -> Probe {
        Probe {
            at_ms: 0.0,
            took_ms,
            during_attack: true,
            error: error.map(String::from),
        }
    }

    #[test]
    fn the_worst_probe_is_held_against_the_limit_and_a_failure_fails() {
        let limit = Duration::from_millis(300);
        let r = probe_result(
            "room-flood",
            String::new(),
            limit,
            vec![probe(3.0, None), probe(1.0, None), probe(2.0, None)],
            (100, 300),
            AttackReport::default(),
        );
        assert_eq!((r.measured, r.probe_p50_ms, r.ok), (3.0, 2.0, true));
        assert_eq!(r.rss_growth_bytes, 200);
        let slow = probe_result(
            "room-flood",
            String::new(),
            limit,
            vec![probe(301.0, None)],
            (0, 0),
            AttackReport::default(),
        );
        assert!(!slow.ok);
        let failed = probe_result(
            "room-flood",
            String::new(),
            limit,
            vec![probe(1.0, None), probe(5.0, Some("join: refused"))],
            (300, 100),
            AttackReport::default(),
        );
        assert_eq!(
            (failed.measured, failed.probes_failed, failed.ok),
            (1.0, 1, false)
        );
        assert_eq!(failed.rss_growth_bytes, 0);
    }

    #[test]
    fn memory_targets_compare_bytes_and_report_kib() {
        let r = rss_result(
            "partial-hellos",
            String::new(),
            PARTIAL_HELLO_RSS_LIMIT,
            PARTIAL_HELLO_RSS_LIMIT,
            40,
            (0, 0),
            AttackReport::default(),
        );
        assert_eq!((r.limit, r.measured, r.ok), (128.0, 128.0, true));
        let over = rss_result(
            "partial-hellos",
            String::new(),
            PARTIAL_HELLO_RSS_LIMIT,
            PARTIAL_HELLO_RSS_LIMIT + 1,
            40,
            (0, 0),
            AttackReport::default(),
        );
        assert!(!over.ok);
    }
}
