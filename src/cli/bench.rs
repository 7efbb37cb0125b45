//! `quicbus bench latency` and `quicbus bench fanout`: arguments, the
//! terminal table, `--json` and `--plot`. The measuring is in
//! `crate::bench` (beside the CLI in the binary, not in the library).

use std::path::PathBuf;
use std::time::Duration;

use crate::bench::fanout::{FanoutConfig, FanoutRow};
use crate::bench::latency::{Kind, LatencyConfig, LatencyRow, Scenario};
use crate::bench::{machine, plot, write_json, Progress};
use clap::{Subcommand, ValueEnum};

use super::CliResult;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Relay and one-way latency, reliable vs datagram, clean and under loss.
    Latency(LatencyArgs),
    /// One publisher to N subscribers: events/s, loss, p99, server CPU and memory.
    Fanout(FanoutArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    Relay,
    Oneway,
    Loss,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeliveryArg {
    Reliable,
    Datagram,
    /// Reliable and datagram.
    Both,
    /// Reliable with datagram copies.
    Copies,
}

/// Output options shared by both benchmarks.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Write the results as a JSON array, one object per row.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the results to an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    /// Measured messages per scenario and delivery.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    samples: u64,
    /// Unmeasured messages first.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    warmup: u64,
    /// Payload bytes (8 to 1100: one datagram).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=1100))]
    size: u64,
    /// Which scenarios; a comma-separated list.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<ScenarioArg>,
    /// Loss levels of the `loss` scenario, percent per packet and direction.
    #[arg(long, value_delimiter = ',', default_value = "0,1,5")]
    loss: Vec<f64>,
    /// Delay netsim adds to each packet in each direction, ms.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_ms)]
    delay: f64,
    /// Each packet's delay varies within delay ± jitter, ms.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_ms)]
    jitter: f64,
    /// Send at this many messages per second instead of one in flight.
    #[arg(long, value_parser = super::positive_hz)]
    rate: Option<f64>,
    /// A datagram not back after this many ms counts as lost (default 5 ms
    /// plus twice the added delay and jitter of the path).
    #[arg(long, value_parser = non_negative_ms)]
    loss_timeout: Option<f64>,
    /// Server worker threads; 0 = one current-thread runtime (as `serve`).
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// Seed of netsim's random decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the runs of reliable events with datagram copies.
    #[arg(long)]
    no_copies: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Subscriber counts; a comma-separated list, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    subscribers: Vec<u64>,
    /// Which delivery to run.
    #[arg(long, value_enum, default_value = "both")]
    delivery: DeliveryArg,
    /// Events published per run (default: aims at 2,000,000 deliveries).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    events: Option<u64>,
    /// Payload bytes (16 to 1100).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=1100))]
    size: u64,
    /// `serve --worker-threads` of the measured server.
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// Worker threads of the publisher and subscribers; 0 = one thread.
    #[arg(long, default_value_t = 0)]
    client_threads: usize,
    /// Longest one run may take, seconds.
    #[arg(long, default_value_t = 120.0, value_parser = super::positive_secs)]
    run_limit: f64,
    #[command(flatten)]
    output: OutputArgs,
}

fn non_negative_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && (0.0..=3_600_000.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("'{s}' must be from 0 to 3600000 milliseconds"))
    }
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

pub fn bench(command: BenchCommand) -> CliResult {
    match command {
        BenchCommand::Latency(a) => latency(a),
        BenchCommand::Fanout(a) => fanout(a),
    }
}

fn latency(args: LatencyArgs) -> CliResult {
    let scenarios = if args.scenario.contains(&ScenarioArg::All) {
        vec![Scenario::Relay, Scenario::Oneway, Scenario::Loss]
    } else {
        let mut chosen = Vec::new();
        for s in &args.scenario {
            let s = match s {
                ScenarioArg::Relay => Scenario::Relay,
                ScenarioArg::Oneway => Scenario::Oneway,
                ScenarioArg::Loss | ScenarioArg::All => Scenario::Loss,
            };
            if !chosen.contains(&s) {
                chosen.push(s);
            }
        }
        chosen
    };
    let config = LatencyConfig {
        samples: args.samples,
        warmup: args.warmup,
        size: usize::try_from(args.size)?,
        scenarios,
        loss_levels: args.loss.clone(),
        delay: ms(args.delay),
        jitter: ms(args.jitter),
        rate: args.rate,
        loss_timeout: args.loss_timeout.map(ms),
        server_threads: args.server_threads,
        seed: args.seed,
        copies: !args.no_copies,
    };
    config.validate()?;
    let progress = Progress::new(!args.output.quiet);
    let rows = crate::bench::latency::run(&config, &progress)?;
    let mode = match args.rate {
        Some(rate) => format!("paced at {rate}/s"),
        None => "one in flight".into(),
    };
    let title = format!(
        "quicbus latency: {} × {} B, {mode}; netsim delay {} ms, jitter {} ms",
        args.samples, args.size, args.delay, args.jitter
    );
    println!("{title}\nmachine: {}\n", machine());
    print_latency(&rows);
    write_outputs(&args.output, &rows, |path| {
        plot::latency_svg(path, &rows, &title)
    })
}

fn print_latency(rows: &[LatencyRow]) {
    println!(
        "{:<16} {:<15} {:>6} {:>15} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9}",
        "scenario",
        "delivery",
        "loss%",
        "delivered/sent",
        "p50µs",
        "p90µs",
        "p99µs",
        "p99.9µs",
        "maxµs",
        "p50/udp",
        "p99/udp"
    );
    for r in rows {
        println!(
            "{:<16} {:<15} {:>6} {:>15} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8.1}x {:>8.1}x",
            r.name,
            r.delivery,
            r.loss_pct,
            format!("{}/{}", r.delivered, r.sent),
            r.latency.p50_us,
            r.latency.p90_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.latency.max_us,
            r.p50_vs_udp,
            r.p99_vs_udp,
        );
    }
}

fn fanout(args: FanoutArgs) -> CliResult {
    let server_exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the quicbus executable to run the server: {e}"))?;
    let kinds = match args.delivery {
        DeliveryArg::Reliable => vec![Kind::Reliable],
        DeliveryArg::Datagram => vec![Kind::Datagram],
        DeliveryArg::Both => vec![Kind::Reliable, Kind::Datagram],
        DeliveryArg::Copies => vec![Kind::Copies],
    };
    let mut subscribers = Vec::new();
    for &n in &args.subscribers {
        subscribers.push(usize::try_from(n)?);
    }
    let config = FanoutConfig {
        subscribers,
        kinds,
        events: args.events,
        size: usize::try_from(args.size)?,
        server_threads: args.server_threads,
        client_threads: args.client_threads,
        run_limit: Duration::from_secs_f64(args.run_limit),
        ..FanoutConfig::new(server_exe)
    };
    config.validate()?;
    let progress = Progress::new(!args.output.quiet);
    let rows = crate::bench::fanout::run(&config, &progress)?;
    let title = format!(
        "quicbus fan-out: 1 publisher → N subscribers, {} B events",
        args.size
    );
    println!("{title}\nmachine: {}\n", machine());
    print_fanout(&rows);
    write_outputs(&args.output, &rows, |path| {
        plot::fanout_svg(path, &rows, &title)
    })
}

fn print_fanout(rows: &[FanoutRow]) {
    println!(
        "{:<15} {:>6} {:>9} {:>12} {:>7} {:>12} {:>7} {:>8} {:>8} {:>11}",
        "delivery",
        "subs",
        "sent",
        "delivered",
        "loss%",
        "events/s",
        "p50µs",
        "p99µs",
        "cpu s",
        "B/conn"
    );
    for r in rows {
        println!(
            "{:<15} {:>6} {:>9} {:>12} {:>7.2} {:>12.0} {:>7} {:>8} {:>8.2} {:>11}",
            r.delivery,
            r.subscribers,
            r.sent,
            r.delivered,
            r.loss_pct,
            r.events_per_sec,
            r.p50_us,
            r.p99_us,
            r.server_cpu_s,
            r.mem_per_conn_bytes,
        );
    }
    if let Some(r) = rows.first() {
        println!("\nraw UDP echo p50 in the same run: {} µs", r.udp_p50_us);
    }
}

fn write_outputs<T: serde::Serialize>(
    output: &OutputArgs,
    rows: &[T],
    draw: impl FnOnce(&std::path::Path) -> Result<(), crate::bench::BenchError>,
) -> CliResult {
    if let Some(path) = &output.json {
        write_json(path, rows)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &output.plot {
        draw(path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
