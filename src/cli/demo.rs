//! `quicbus demo`: a server, a game publisher and a game subscriber in one
//! process, printing the subscriber's view once a second.

use std::time::Duration;

use quicbus::certs;
use quicbus::client::{Client, ClientOptions, Trust};
use quicbus::game::{self, World};
use quicbus::server::{FsyncPolicy, Server, ServerConfig, ServerIdentity, Storage};

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long to run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// Entities in the world.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    entities: u64,
}

pub async fn demo(args: DemoArgs) -> CliResult {
    // Certificates live only in memory; history is durable, as with
    // `serve`, in a data directory that goes away with the demo.
    let dev = certs::generate(&[])?;
    let data = crate::bench::scratch::ScratchDir::new("demo")?;
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        storage: Storage::Disk {
            dir: data.path().to_path_buf(),
            fsync: FsyncPolicy::default(),
        },
        ..ServerConfig::default()
    };
    let server = Server::bind(config, ServerIdentity::from_dev_certs(&dev)?)?.spawn();
    let mut options = ClientOptions::new(server.local_addr());
    options.trust = Trust::CaPem(dev.ca_pem.clone());

    let (subscriber, mut events) = Client::connect(options.clone()).await?;
    subscriber.join(game::ROOM).await?;
    let (publisher, _publisher_events) = Client::connect(options).await?;
    let duration = Duration::from_secs(args.seconds);
    println!(
        "quicbus demo: server on {} (history in {}), {} entities at {} Hz for {}s (snapshots as datagrams; spawn/despawn/score reliable)",
        server.local_addr(),
        data.path().display(),
        args.entities,
        game::TICK_HZ,
        args.seconds
    );
    let mut world = World::new(args.entities as usize, 42);
    let publishing = async {
        // Run a little longer than the subscriber so its last second is full.
        game::run_publisher(
            &publisher,
            &mut world,
            Some(duration + Duration::from_millis(200)),
        )
        .await
    };
    let subscribing = game::run_subscriber(&subscriber, &mut events, Some(duration), |report| {
        println!("{report}");
    });
    let (published, view) = tokio::join!(publishing, subscribing);
    let (published, view) = (published?, view?);
    let stats = subscriber.stats();
    println!(
        "done: publisher sent {} ticks, {} datagrams, {} reliable events; subscriber got {} datagrams, {} reliable events, sees {} entities; rtt {:?}",
        published.ticks,
        published.datagrams,
        published.reliable,
        stats.datagrams_received,
        stats.reliable_received,
        view.entities().len(),
        stats.rtt
    );
    publisher.close().await;
    subscriber.close().await;
    server.shutdown().await;
    Ok(())
}
