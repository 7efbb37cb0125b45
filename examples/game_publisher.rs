//! Publishes a moving world to room `game`: 60 snapshots a second as
//! datagrams (split when larger than the datagram limit, each with a
//! timestamp), plus reliable `spawn`, `despawn` and `score` events.
//!
//! Terminal 1: `cargo run --release -- serve`
//! Terminal 2: `cargo run --release --example game_subscriber`
//! Terminal 3: `cargo run --release --example game_publisher -- --entities 500`
//!
//! Both examples trust `certs/ca.pem`, which `serve` creates on first run.

use std::time::Duration;

use clap::Parser;
use quicbus::client::{Client, ClientOptions, Trust};
use quicbus::game::{self, World};

#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: std::net::SocketAddr,
    /// CA that signed the server's certificate.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: std::path::PathBuf,
    /// Entities in the world.
    #[arg(long, default_value_t = 64)]
    entities: usize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut options = ClientOptions::new(args.server);
    options.trust = Trust::CaFile(args.ca);
    options.client_name = "game_publisher".into();
    let (client, _events) = Client::connect(options).await?;
    let mut world = World::new(args.entities, 42);
    println!(
        "publishing {} entities to room '{}' at {} Hz (Ctrl-C to stop)",
        args.entities,
        game::ROOM,
        game::TICK_HZ
    );
    let duration = args.seconds.map(Duration::from_secs);
    let totals = tokio::select! {
        totals = game::run_publisher(&client, &mut world, duration) => totals?,
        _ = tokio::signal::ctrl_c() => game::PublisherTotals { ticks: world.tick(), ..Default::default() },
    };
    println!(
        "sent {} ticks ({} datagrams, {} reliable events)",
        totals.ticks, totals.datagrams, totals.reliable
    );
    client.close().await;
    Ok(())
}
