//! Relay round-trip latency through a quicbus server, with the library API,
//! beside a raw-UDP echo measured in the same run (the machine's floor).
//!
//! One process, no other terminal needed:
//!
//! `cargo run --release --example latency -- --samples 20000 --server-threads 0`
//!
//! Client A emits to room `ping`; client B, joined there, emits each event
//! back to room `pong`, where A is joined: A → server → B → server → A. One
//! message in flight; the time runs from just before A's emit to A's receipt.
//! `--server-threads 0` runs the server on a current-thread runtime (the
//! `quicbus serve` default), N on a multi-thread one with N workers; the
//! clients always share one current-thread runtime on their own thread.
//! `--copies` sends small reliable events with datagram copies as well.
//! `quicbus bench latency` measures the same and more (one-way, loss
//! through netsim, JSON and a plot).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use quicbus::client::{Client, ClientOptions, Delivery, Trust};
use quicbus::server::{Server, ServerConfig, ServerIdentity};

#[derive(Parser)]
struct Args {
    /// Measured round trips per delivery kind.
    #[arg(long, default_value_t = 20_000)]
    samples: u64,
    /// Round trips before measuring.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Server worker threads; 0 = current-thread runtime.
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// Send small reliable events with datagram copies too
    /// (`ClientOptions::copies`).
    #[arg(long)]
    copies: bool,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn report(name: &str, h: &Histogram<u64>, lost: u64, udp_p50: Option<u64>) {
    let ratio = udp_p50
        .map(|u| {
            format!(
                "  p50 {:.1}x udp",
                h.value_at_quantile(0.5) as f64 / u.max(1) as f64
            )
        })
        .unwrap_or_default();
    println!(
        "{name:<18} p50 {:>6} µs  p90 {:>6}  p99 {:>6}  p99.9 {:>6}  max {:>7}  n {:>6}  lost {lost}{ratio}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len(),
    );
}

/// Raw UDP echo on loopback: the floor every figure is compared with.
fn udp_echo(args: &Args) -> Result<Histogram<u64>> {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let addr = server.local_addr()?;
    server.set_read_timeout(Some(Duration::from_secs(1)))?;
    let total = args.warmup + args.samples;
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..total {
            match server.recv_from(&mut buf) {
                Ok((len, from)) => {
                    let _ = server.send_to(&buf[..len], from);
                }
                Err(_) => return,
            }
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.connect(addr)?;
    client.set_read_timeout(Some(Duration::from_secs(1)))?;
    let payload = vec![0u8; args.size];
    let mut buf = vec![0u8; 65_536];
    let mut h = histogram();
    for i in 0..total {
        let started = Instant::now();
        client.send(&payload)?;
        client.recv(&mut buf)?;
        if i >= args.warmup {
            h.record(started.elapsed().as_micros().max(1) as u64)?;
        }
    }
    let _ = echo.join();
    Ok(h)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let udp = udp_echo(&args)?;

    // The server on its own thread and runtime.
    let dev = quicbus::certs::generate(&[])?;
    let identity = ServerIdentity::from_dev_certs(&dev)?;
    let runtime = quicbus::server::runtime(args.server_threads)?;
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        ..ServerConfig::default()
    };
    let server = runtime.block_on(async { Server::bind(config, identity) })?;
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        runtime.block_on(server.run(async {
            let _ = stop_rx.await;
        }))
    });

    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = clients.block_on(relay(&args, addr, &dev.ca_pem));
    let _ = stop_tx.send(());
    let _ = server_thread.join();
    let (reliable, datagram) = result?;

    let udp_p50 = udp.value_at_quantile(0.5);
    println!(
        "{} samples of {} bytes after {} warm-up; server runtime: {}",
        args.samples,
        args.size,
        args.warmup,
        if args.server_threads == 0 {
            "current-thread".to_string()
        } else {
            format!("multi-thread, {} workers", args.server_threads)
        }
    );
    report("udp echo", &udp, 0, None);
    report("relay reliable", &reliable.0, reliable.1, Some(udp_p50));
    report("relay datagram", &datagram.0, datagram.1, Some(udp_p50));
    Ok(())
}

async fn relay(
    args: &Args,
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> Result<((Histogram<u64>, u64), (Histogram<u64>, u64))> {
    let mut options = ClientOptions::new(addr);
    options.trust = Trust::CaPem(ca_pem.to_string());
    options.copies = args.copies;
    let (a, mut a_events) = Client::connect(options.clone()).await?;
    let (b, mut b_events) = Client::connect(options).await?;
    a.join("pong").await?;
    b.join("ping").await?;
    // B bounces every event back the way it came.
    let bouncer = tokio::spawn(async move {
        while let Some(event) = b_events.next().await {
            let sent = match event.delivery {
                Delivery::Reliable { .. } => b.emit("pong", "pong", event.payload).await,
                Delivery::Datagram { .. } => b.emit_datagram("pong", "pong", event.payload).await,
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let payload = bytes::Bytes::from(vec![0u8; args.size]);
    let mut results = Vec::new();
    for datagram in [false, true] {
        let mut h = histogram();
        let mut lost = 0;
        for i in 0..args.warmup + args.samples {
            let started = Instant::now();
            if datagram {
                a.emit_datagram("ping", "ping", payload.clone()).await?;
            } else {
                a.emit("ping", "ping", payload.clone()).await?;
            }
            // A lost datagram is given up after 100 ms and counted.
            match tokio::time::timeout(Duration::from_millis(100), a_events.next()).await {
                Ok(Some(_)) if i >= args.warmup => {
                    h.record(started.elapsed().as_micros().max(1) as u64)?;
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(a.closed().await.into()),
                Err(_) => lost += 1,
            }
        }
        results.push((h, lost));
    }
    bouncer.abort();
    a.close().await;
    let datagram = results.pop().ok_or("no datagram results")?;
    let reliable = results.pop().ok_or("no reliable results")?;
    Ok((reliable, datagram))
}
