//! Command-line commands. Each one is thin: it turns arguments into library
//! calls and prints results.

mod bench;
pub mod config;
mod demo;
mod netsim;
mod pubsub;
mod serve;
mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use quicbus::client::{ClientOptions, Trust};

/// A low-latency event bus over QUIC: rooms, reliable streams and datagrams.
#[derive(Debug, Parser)]
#[command(name = "quicbus", version, about)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server.
    // A flag given twice takes the last value (scripts and the benchmarks
    // put their defaults first).
    #[command(args_override_self = true)]
    Serve(Box<serve::ServeArgs>),
    /// Write a development CA and server certificate.
    Certs(serve::CertsArgs),
    /// Publish events to a room.
    Pub(pubsub::PubArgs),
    /// Print a room's events as JSON lines.
    Sub(pubsub::SubArgs),
    /// Server, game publisher and game subscriber in one process.
    Demo(demo::DemoArgs),
    /// UDP proxy that adds loss, delay, jitter, reordering, duplicates and outages.
    Netsim(netsim::NetsimArgs),
    /// Latency and fan-out benchmarks, beside a raw-UDP echo.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Mint a signed token (HS256) for development and tests.
    Token(token::TokenArgs),
}

/// Errors of a command: one line for stderr.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Runs the chosen command.
pub fn run(args: Args) -> CliResult {
    match args.command {
        Command::Serve(a) => serve::serve(*a),
        Command::Certs(a) => serve::certs(a),
        Command::Pub(a) => current_thread()?.block_on(pubsub::publish(a)),
        Command::Sub(a) => current_thread()?.block_on(pubsub::subscribe(a)),
        Command::Demo(a) => current_thread()?.block_on(demo::demo(a)),
        Command::Netsim(a) => current_thread()?.block_on(netsim::netsim(a)),
        Command::Bench(c) => bench::bench(c),
        Command::Token(a) => token::token(a),
    }
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// How a client command reaches and trusts the server.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Server address, HOST:PORT. Repeat it, or give a comma-separated
    /// list, for servers serving the same rooms: the first connection tries
    /// them in order, a reconnect in random order.
    #[arg(
        long = "server",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:4433",
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: PathBuf,
    /// Name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Seconds to wait for the connection and handshake (per server tried).
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    connect_timeout: f64,
    /// Token for servers started with --token (from the environment, it
    /// stays out of `ps`).
    #[arg(long, env = "QUICBUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds of silence after which the connection counts as lost (and
    /// the client reconnects).
    #[arg(long, default_value_t = 30.0, value_parser = positive_secs)]
    idle_timeout: f64,
    /// Do not reconnect when the connection is lost: exit 1 instead.
    #[arg(long)]
    no_reconnect: bool,
}

impl ConnectArgs {
    async fn options(&self) -> CliResult<ClientOptions> {
        let mut servers = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            servers.push(resolve(server).await?);
        }
        let Some((&first, others)) = servers.split_first() else {
            return Err("no server address given".into());
        };
        let mut options = ClientOptions::new(first);
        options.servers = others.to_vec();
        options.trust = Trust::CaFile(self.ca.clone());
        options.server_name = self.server_name.clone();
        options.connect_timeout = Duration::from_secs_f64(self.connect_timeout);
        options.token = self.token.clone();
        options.client_name = "quicbus-cli".into();
        options.transport.idle_timeout = Duration::from_secs_f64(self.idle_timeout);
        // Keep-alives well inside the idle timeout, so only a dead path idles out.
        options.transport.keep_alive =
            Duration::from_secs_f64(self.idle_timeout / 4.0).min(options.transport.keep_alive);
        if self.no_reconnect {
            options.reconnect = None;
        }
        Ok(options)
    }
}

/// Resolves HOST:PORT, with a message that names what was given.
async fn resolve(addr: &str) -> CliResult<SocketAddr> {
    let mut found = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve server address '{addr}': {e}"))?;
    found
        .next()
        .ok_or_else(|| format!("server address '{addr}' resolves to nothing").into())
}

fn positive(s: &str, unit: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v > 0.0 && v.is_finite() && v < 1e9 {
        Ok(v)
    } else {
        Err(format!("'{s}' must be a positive number of {unit}"))
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    positive(s, "seconds")
}

fn positive_hz(s: &str) -> Result<f64, String> {
    positive(s, "events per second")
}

/// Completes on Ctrl-C or SIGTERM; the handlers are installed at once.
#[cfg(unix)]
pub(crate) fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
pub(crate) fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
