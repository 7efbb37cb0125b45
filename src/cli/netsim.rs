//! `quicbus netsim`: the impairment proxy from the command line.

use std::net::SocketAddr;
use std::time::Duration;

use quicbus::netsim::{
    BlackholeSchedule, DirectionStats, Impairment, Netsim, NetsimConfig, NetsimStats, MAX_DELAY,
};

use super::{positive_secs, resolve, CliResult};

/// How often a line of counters goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct NetsimArgs {
    /// UDP address clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// The server to forward to, HOST:PORT.
    #[arg(long)]
    upstream: String,
    /// Packets lost, in percent: PCT both ways, or up:PCT / down:PCT; repeatable.
    #[arg(long, value_name = "[up:|down:]PCT", value_parser = percent)]
    loss: Vec<Sided<f64>>,
    /// Delay added to each packet, in milliseconds (both ways, or up:MS / down:MS).
    #[arg(long, value_name = "[up:|down:]MS", value_parser = millis)]
    delay: Vec<Sided<Duration>>,
    /// Each packet's delay varies within delay ± jitter, in milliseconds.
    #[arg(long, value_name = "[up:|down:]MS", value_parser = millis)]
    jitter: Vec<Sided<Duration>>,
    /// Packets held back to leave after the next one, in percent.
    #[arg(long, value_name = "[up:|down:]PCT", value_parser = percent)]
    reorder: Vec<Sided<f64>>,
    /// Packets sent twice, in percent.
    #[arg(long, value_name = "[up:|down:]PCT", value_parser = percent)]
    duplicate: Vec<Sided<f64>>,
    /// Seed of every random decision: the same seed and traffic repeat them.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start an outage (every packet dropped, both ways) every SECS seconds.
    #[arg(long, value_name = "SECS", requires = "blackhole_for", value_parser = positive_secs)]
    blackhole_every: Option<f64>,
    /// How long each outage lasts, in seconds (less than --blackhole-every).
    #[arg(long, value_name = "SECS", requires = "blackhole_every", value_parser = positive_secs)]
    blackhole_for: Option<f64>,
    /// Most clients at once; packets of further clients are dropped.
    #[arg(long, default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_clients: usize,
    /// Seconds without a packet after which a client's mapping expires.
    #[arg(long, default_value_t = 60.0, value_parser = positive_secs)]
    client_idle: f64,
}

/// Which directions a flag value applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Both,
    Up,
    Down,
}

/// One value of a per-direction flag: `V`, `up:V` or `down:V`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sided<T> {
    side: Side,
    value: T,
}

fn sided<T>(s: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Sided<T>, String> {
    let (side, value) = match s.split_once(':') {
        None => (Side::Both, s),
        Some(("up", v)) => (Side::Up, v),
        Some(("down", v)) => (Side::Down, v),
        Some((other, _)) => {
            return Err(format!(
                "'{other}' is not a direction; use VALUE, up:VALUE or down:VALUE"
            ))
        }
    };
    Ok(Sided {
        side,
        value: parse(value)?,
    })
}

fn percent(s: &str) -> Result<Sided<f64>, String> {
    sided(s, |v| match v.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("'{v}' is not a percentage from 0 to 100")),
    })
}

fn millis(s: &str) -> Result<Sided<Duration>, String> {
    sided(s, |v| match v.parse::<f64>() {
        Ok(ms) if (0.0..=MAX_DELAY.as_secs_f64() * 1000.0).contains(&ms) => {
            Ok(Duration::from_secs_f64(ms / 1000.0))
        }
        _ => Err(format!(
            "'{v}' is not a number of milliseconds from 0 to {}",
            MAX_DELAY.as_millis()
        )),
    })
}

/// Later values win: `--loss 5 --loss up:1` is 1% up, 5% down.
fn apply<T: Copy>(flags: &[Sided<T>], up: &mut T, down: &mut T) {
    for flag in flags {
        if flag.side != Side::Down {
            *up = flag.value;
        }
        if flag.side != Side::Up {
            *down = flag.value;
        }
    }
}

impl NetsimArgs {
    /// The (up, down) impairments the flags describe.
    fn impairments(&self) -> (Impairment, Impairment) {
        let (mut up, mut down) = (Impairment::default(), Impairment::default());
        apply(&self.loss, &mut up.loss_pct, &mut down.loss_pct);
        apply(&self.delay, &mut up.delay, &mut down.delay);
        apply(&self.jitter, &mut up.jitter, &mut down.jitter);
        apply(&self.reorder, &mut up.reorder_pct, &mut down.reorder_pct);
        apply(
            &self.duplicate,
            &mut up.duplicate_pct,
            &mut down.duplicate_pct,
        );
        (up, down)
    }

    /// The outage schedule; one that cannot work is a usage error.
    fn blackhole(&self) -> Result<Option<BlackholeSchedule>, clap::Error> {
        let (Some(every), Some(lasts)) = (self.blackhole_every, self.blackhole_for) else {
            return Ok(None);
        };
        if lasts >= every {
            let mut cmd =
                <NetsimArgs as clap::Args>::augment_args(clap::Command::new("quicbus netsim"));
            return Err(cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("--blackhole-for ({lasts}) must be less than --blackhole-every ({every})"),
            ));
        }
        Ok(Some(BlackholeSchedule {
            every: Duration::from_secs_f64(every),
            duration: Duration::from_secs_f64(lasts),
        }))
    }
}

pub async fn netsim(args: NetsimArgs) -> CliResult {
    let blackhole = args.blackhole().unwrap_or_else(|e| e.exit());
    let (up, down) = args.impairments();
    let mut config = NetsimConfig::new(args.listen, resolve(&args.upstream).await?);
    config.up = up;
    config.down = down;
    config.seed = args.seed;
    config.blackhole = blackhole;
    config.max_clients = args.max_clients;
    config.client_idle = Duration::from_secs_f64(args.client_idle);
    // Before the first line, so a signal right after it is handled.
    let stop = super::stop_signal()?;
    let proxy = Netsim::start(config.clone()).await?;
    let outages = blackhole.map_or(String::new(), |b| {
        format!("; blackhole {:?} every {:?}", b.duration, b.every)
    });
    eprintln!(
        "quicbus netsim listening on {}, forwarding to {} (seed {}; up: {}; down: {}{outages}) (Ctrl-C to stop)",
        proxy.local_addr(),
        config.upstream,
        config.seed,
        describe(&up),
        describe(&down),
    );
    let started = tokio::time::Instant::now();
    let mut progress = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = progress.tick() => {
                let s = proxy.stats();
                eprintln!(
                    "t={}s {} | {} | clients={} blackhole={}",
                    started.elapsed().as_secs(),
                    counters("up", &s.up),
                    counters("down", &s.down),
                    s.clients,
                    if proxy.blackholed() { "on" } else { "off" },
                );
            }
        }
    }
    let stats = proxy.stats();
    proxy.shutdown().await;
    println!("{}", final_counters(&stats));
    Ok(())
}

fn describe(imp: &Impairment) -> String {
    let mut parts = Vec::new();
    if imp.loss_pct > 0.0 {
        parts.push(format!("loss {}%", imp.loss_pct));
    }
    if !imp.delay.is_zero() || !imp.jitter.is_zero() {
        let mut delay = format!("delay {:?}", imp.delay);
        if !imp.jitter.is_zero() {
            delay += &format!(" ± {:?}", imp.jitter);
        }
        parts.push(delay);
    }
    if imp.reorder_pct > 0.0 {
        parts.push(format!("reorder {}%", imp.reorder_pct));
    }
    if imp.duplicate_pct > 0.0 {
        parts.push(format!("duplicate {}%", imp.duplicate_pct));
    }
    if parts.is_empty() {
        "clean".into()
    } else {
        parts.join(", ")
    }
}

/// `NAME: key=value …`, one key per counter, named as in [`DirectionStats`].
fn counters(name: &str, d: &DirectionStats) -> String {
    format!(
        "{name}: received={} forwarded={} dropped_loss={} dropped_blackhole={} dropped_overflow={} duplicated={} reordered={} send_failed={}",
        d.received,
        d.forwarded,
        d.dropped_loss,
        d.dropped_blackhole,
        d.dropped_overflow,
        d.duplicated,
        d.reordered,
        d.send_failed
    )
}

fn final_counters(s: &NetsimStats) -> String {
    format!(
        "{}\n{}\nclients: live={} refused={}",
        counters("up", &s.up),
        counters("down", &s.down),
        s.clients,
        s.clients_refused
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<NetsimArgs, clap::Error> {
        let mut argv = vec![
            "quicbus",
            "netsim",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:4433",
        ];
        argv.extend_from_slice(extra);
        match super::super::Args::try_parse_from(argv)?.command {
            super::super::Command::Netsim(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn direction_prefixes_parse() {
        assert_eq!(
            percent("5"),
            Ok(Sided {
                side: Side::Both,
                value: 5.0
            })
        );
        assert_eq!(
            percent("up:2.5").map(|s| (s.side, s.value)),
            Ok((Side::Up, 2.5))
        );
        assert_eq!(percent("down:0").map(|s| s.side), Ok(Side::Down));
        assert_eq!(
            millis("down:30").map(|s| s.value),
            Ok(Duration::from_millis(30))
        );
        for bad in ["sideways:5", "up:", "101", "-1", "nan", "up:down:1", "5%"] {
            assert!(percent(bad).is_err(), "{bad}");
        }
        assert!(millis("-1").is_err());
        assert!(millis("inf").is_err());
    }

    #[test]
    fn repeated_flags_set_each_direction_and_later_ones_win() {
        let args = parse(&[
            "--loss",
            "up:5",
            "--loss",
            "down:1",
            "--delay",
            "20",
            "--delay",
            "up:50",
            "--jitter",
            "down:3",
            "--duplicate",
            "1",
        ])
        .unwrap();
        let (up, down) = args.impairments();
        assert_eq!((up.loss_pct, down.loss_pct), (5.0, 1.0));
        assert_eq!(up.delay, Duration::from_millis(50));
        assert_eq!(down.delay, Duration::from_millis(20));
        assert_eq!(
            (up.jitter, down.jitter),
            (Duration::ZERO, Duration::from_millis(3))
        );
        assert_eq!((up.duplicate_pct, down.duplicate_pct), (1.0, 1.0));
        assert_eq!((up.reorder_pct, down.reorder_pct), (0.0, 0.0));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for extra in [
            &["--loss", "101"][..],
            &["--loss", "left:5"],
            &["--delay", "-5"],
            &["--blackhole-every", "10"],
            &["--blackhole-for", "1"],
            &["--max-clients", "0"],
        ] {
            assert!(parse(extra).is_err(), "{extra:?}");
        }
        let args = parse(&["--blackhole-every", "2", "--blackhole-for", "3"]).unwrap();
        assert!(args.blackhole().is_err());
        let args = parse(&["--blackhole-every", "10", "--blackhole-for", "0.5"]).unwrap();
        assert_eq!(
            args.blackhole().unwrap(),
            Some(BlackholeSchedule {
                every: Duration::from_secs(10),
                duration: Duration::from_millis(500),
            })
        );
    }
}
