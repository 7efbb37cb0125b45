//! Follows the world that `game_publisher` publishes to room `game` and
//! prints, once a second: complete snapshots per second, datagrams lost and
//! dropped as stale, reliable events received, and how old snapshots were
//! on arrival (p50/p99, from the publisher's timestamps; meaningful when
//! both run on the same machine or on clock-synchronised ones).
//!
//! Terminal 1: `cargo run --release -- serve`
//! Terminal 2: `cargo run --release --example game_subscriber`
//! Terminal 3: `cargo run --release --example game_publisher`

use std::time::Duration;

use clap::Parser;
use quicbus::client::{Client, ClientOptions, Trust};
use quicbus::game;

#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: std::net::SocketAddr,
    /// CA that signed the server's certificate.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: std::path::PathBuf,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut options = ClientOptions::new(args.server);
    options.trust = Trust::CaFile(args.ca);
    options.client_name = "game_subscriber".into();
    let (client, mut events) = Client::connect(options).await?;
    client.join(game::ROOM).await?;
    println!("following room '{}' (Ctrl-C to stop)", game::ROOM);
    let duration = args.seconds.map(Duration::from_secs);
    tokio::select! {
        view = game::run_subscriber(&client, &mut events, duration, |r| println!("{r}")) => {
            let view = view?;
            let top = view.scores().iter().max_by_key(|(_, points)| **points);
            if let Some((id, points)) = top {
                println!("leader: entity {id} with {points} points");
            }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    client.close().await;
    Ok(())
}
