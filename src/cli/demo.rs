//! `quicbus demo`: a server, a game publisher and a game subscriber in one
//! process, printing the subscriber's view once a second. `demo --web ADDR`
//! instead serves the trade-off page: the same world drawn from reliable
//! events and from datagrams, in a browser whose path to the server runs
//! through netsim, set from the page.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicbus::certs;
use quicbus::client::{Client, ClientOptions, Trust};
use quicbus::game::{self, World};
use quicbus::server::{FsyncPolicy, Server, ServerConfig, ServerIdentity, Storage};

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long to run (default 10 s; with --web, until Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: Option<u64>,
    /// Entities in the world (default 64; with --web 48, at most 90, so
    /// that a snapshot fits one datagram).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    entities: Option<u64>,
    /// Serve the trade-off page on this TCP address: open
    /// http://ADDR/ in a browser (WebTransport).
    #[arg(long, value_name = "ADDR")]
    web: Option<SocketAddr>,
}

/// Entities of `demo --web` at most: a snapshot of 90 is 1094 bytes, under
/// the 1211-byte datagram limit Chromium showed on loopback.
const WEB_MAX_ENTITIES: u64 = 90;

pub async fn demo(args: DemoArgs) -> CliResult {
    if let Some(addr) = args.web {
        return demo_web(addr, args).await;
    }
    let seconds = args.seconds.unwrap_or(10);
    let entities = args.entities.unwrap_or(64);
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
    let duration = Duration::from_secs(seconds);
    println!(
        "quicbus demo: server on {} (history in {}), {} entities at {} Hz for {}s (snapshots as datagrams; spawn/despawn/score reliable)",
        server.local_addr(),
        data.path().display(),
        entities,
        game::TICK_HZ,
        seconds
    );
    let mut world = World::new(entities as usize, 42);
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

/// `demo --web`: a server, netsim in front of it for the pages, the web
/// endpoint, and a publisher sending every tick's snapshot twice into room
/// `world` (reliable and as a datagram), until Ctrl-C or `--seconds`.
async fn demo_web(addr: SocketAddr, args: DemoArgs) -> CliResult {
    let entities = args.entities.unwrap_or(48);
    if entities > WEB_MAX_ENTITIES {
        return Err(format!(
            "--entities {entities}: at most {WEB_MAX_ENTITIES} with --web (a snapshot must fit one datagram)"
        )
        .into());
    }
    let dev = certs::generate(&[])?;
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        storage: Storage::Memory,
        ..ServerConfig::default()
    };
    let server = Server::bind(config, ServerIdentity::from_dev_certs(&dev)?)?.spawn();
    // The pages' path: everything a browser sends and receives goes
    // through this proxy, which the page's sliders set.
    let netsim = quicbus::netsim::Netsim::start(quicbus::netsim::NetsimConfig::new(
        "127.0.0.1:0".parse()?,
        server.local_addr(),
    ))
    .await?;
    let netsim = Arc::new(netsim);
    let demo = quicbus::web::DemoWeb {
        info: serde_json::json!({
            "room": WEB_ROOM,
            "event": WEB_EVENT,
            "tick_hz": game::TICK_HZ,
            "world_size": game::WORLD_SIZE,
            "entities": entities,
            "chat_room": "chat",
        }),
        netsim: netsim.clone(),
        impairment: Arc::new(Mutex::new(quicbus::netsim::Impairment::default())),
    };
    let web = quicbus::web::serve(
        addr,
        quicbus::web::WebConfig {
            quic: netsim.local_addr(),
            browsers: server.browser_certs(),
            demo: Some(demo.clone()),
        },
    )
    .await?;
    let mut options = ClientOptions::new(server.local_addr());
    options.trust = Trust::CaPem(dev.ca_pem.clone());
    let (publisher, _events) = Client::connect(options).await?;
    eprintln!(
        "quicbus demo: open {} in a browser (server {}, the page's path through netsim {}; {entities} entities at {} Hz; Ctrl-C to stop)",
        web.url(),
        server.local_addr(),
        netsim.local_addr(),
        game::TICK_HZ,
    );
    let stop = super::stop_signal()?;
    let until = args.seconds.map(Duration::from_secs);
    let started = tokio::time::Instant::now();
    let mut world = World::new(entities as usize, 42);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / game::TICK_HZ);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = tokio::time::interval_at(started + REPORT_EVERY, REPORT_EVERY);
    let mut failures = 0u64;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = report.tick() => {
                let path = *demo.impairment.lock().unwrap_or_else(|e| e.into_inner());
                let s = netsim.stats();
                eprintln!(
                    "t={:>4}s  ticks {:>6}  pages {}  path: loss {}% delay {:?} jitter {:?}  dropped by loss {} (to pages {}, from pages {})  publish failures {failures}",
                    started.elapsed().as_secs(),
                    world.tick(),
                    s.clients,
                    path.loss_pct,
                    path.delay,
                    path.jitter,
                    s.down.dropped_loss + s.up.dropped_loss,
                    s.down.dropped_loss,
                    s.up.dropped_loss,
                );
                if until.is_some_and(|u| started.elapsed() >= u) {
                    break;
                }
            }
            _ = tick.tick() => {
                world.step();
                let sent_at_ms = game::now_us() as f64 / 1000.0;
                let payload = game::web_snapshot(world.tick(), sent_at_ms, world.entities());
                // The same snapshot both ways: the page draws each side
                // from its own delivery.
                if let Err(e) = publisher.emit(WEB_ROOM, WEB_EVENT, payload.clone()).await {
                    failures += 1;
                    tracing::warn!("reliable snapshot not sent: {e}");
                }
                if let Err(e) = publisher.emit_datagram(WEB_ROOM, WEB_EVENT, payload).await {
                    failures += 1;
                    tracing::warn!("datagram snapshot not sent: {e}");
                }
            }
        }
    }
    publisher.close().await;
    drop(web);
    server.shutdown().await;
    Ok(())
}

/// The room and event of the page's world.
const WEB_ROOM: &str = "world";
const WEB_EVENT: &str = "snapshot";
/// How often `demo --web` says how it goes.
const REPORT_EVERY: Duration = Duration::from_secs(5);
