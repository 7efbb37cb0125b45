//! `quicbus pub` and `quicbus sub`.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use quicbus::client::{Client, Delivery, Event, Incoming, PendingAck, Recovery};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use super::{positive_hz, positive_secs, CliResult, ConnectArgs};

#[derive(Debug, clap::Args)]
pub struct SubArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Room to join; repeatable.
    #[arg(long = "room", required = true)]
    rooms: Vec<String>,
    /// Exit 0 after this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Exit 1 if --count events have not arrived within this many seconds.
    #[arg(long, value_parser = positive_secs)]
    timeout: Option<f64>,
}

/// One event as a JSON line; fields in the documented order.
#[derive(Serialize)]
struct EventLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    event: &'a str,
    delivery: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
}

/// A recovery result as a JSON line.
#[derive(Serialize)]
struct RecoveryLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    recovered: bool,
    replayed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn recovery_json(room: &str, recovery: Recovery) -> serde_json::Result<String> {
    let (recovered, replayed, reason) = match recovery {
        Recovery::Recovered { replayed } => (true, replayed, None),
        Recovery::Live => (true, 0, None),
        Recovery::NotRecovered { reason } => (false, 0, Some(reason.to_string())),
    };
    serde_json::to_string(&RecoveryLine {
        kind: "recovery",
        room,
        recovered,
        replayed,
        reason,
    })
}

fn event_json(event: &Event) -> serde_json::Result<String> {
    let text = std::str::from_utf8(&event.payload).ok();
    let line = EventLine {
        kind: "event",
        room: &event.room,
        event: &event.name,
        delivery: match event.delivery {
            Delivery::Reliable { .. } => "reliable",
            Delivery::Datagram { .. } => "datagram",
        },
        offset: event.offset(),
        seq: event.seq(),
        payload: text,
        payload_b64: match text {
            Some(_) => None,
            None => Some(base64::engine::general_purpose::STANDARD.encode(&event.payload)),
        },
    };
    serde_json::to_string(&line)
}

pub async fn subscribe(args: SubArgs) -> CliResult {
    let (client, mut events) = Client::connect(args.connect.options().await?).await?;
    for room in &args.rooms {
        let offset = client.join(room).await?;
        eprintln!("joined {room} at offset {offset}");
    }
    let deadline = args
        .timeout
        .map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t));
    let mut received = 0u64;
    let stdout = std::io::stdout();
    while args.count.is_none_or(|n| received < n) {
        let incoming = tokio::select! {
            incoming = events.next_incoming() => incoming,
            _ = sleep_until(deadline) => {
                return Err(format!(
                    "timed out after {}s with {received} of {} events",
                    args.timeout.unwrap_or_default(),
                    args.count.map_or("unlimited".to_string(), |n| n.to_string())
                ).into());
            }
            _ = tokio::signal::ctrl_c() => break,
        };
        let line = match incoming {
            None => return Err(client.closed().await.into()),
            Some(Incoming::Event(event)) => {
                received += 1;
                event_json(&event)?
            }
            Some(Incoming::Recovery { room, recovery }) => recovery_json(&room, recovery)?,
            Some(Incoming::Disconnected { reason }) => {
                eprintln!("{reason}; reconnecting");
                continue;
            }
            Some(Incoming::Reconnected { resumed }) => {
                eprintln!("reconnected ({resumed:?})");
                continue;
            }
            // The library logs it (a warning on stderr).
            Some(Incoming::ServerError { .. }) => continue,
            // The command has no way to get another token.
            Some(Incoming::TokenExpired { reason }) => return Err(reason.into()),
            Some(Incoming::Forbidden { room, action }) => {
                return Err(format!(
                    "forbidden: the token no longer allows {action} on room {room}"
                )
                .into());
            }
        };
        let mut out = stdout.lock();
        let written = writeln!(out, "{line}").and_then(|()| out.flush());
        if let Err(e) = written {
            // A reader that went away (`quicbus sub | head`) is not a failure.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
    }
    client.close().await;
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, clap::Args)]
pub struct PubArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Room to publish to.
    #[arg(long)]
    room: String,
    /// Event name.
    #[arg(long)]
    event: String,
    /// Send as unreliable datagrams instead of on the room's reliable stream.
    #[arg(long)]
    datagram: bool,
    /// How many times to send PAYLOAD.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Events per second (default: as fast as possible).
    #[arg(long, value_parser = positive_hz)]
    rate: Option<f64>,
    /// Wait for each reliable event's ack before sending the next (and
    /// print its offset); without it, acks are pipelined.
    #[arg(long, conflicts_with = "datagram")]
    ack: bool,
    /// The payload; without it, each line of standard input is one event.
    payload: Option<String>,
}

/// Where the payloads come from.
enum Payloads {
    Repeat { payload: String, left: u64 },
    Lines(tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>),
}

impl Payloads {
    async fn next(&mut self) -> CliResult<Option<String>> {
        match self {
            Payloads::Repeat { payload, left } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                Ok(Some(payload.clone()))
            }
            Payloads::Lines(lines) => Ok(lines.next_line().await?),
        }
    }
}

/// Acks in flight before `pub` waits for the oldest.
const ACK_WINDOW: usize = 4096;

pub async fn publish(args: PubArgs) -> CliResult {
    let (client, _events) = Client::connect(args.connect.options().await?).await?;
    let mut payloads = match args.payload.clone() {
        Some(payload) => Payloads::Repeat {
            payload,
            left: args.count,
        },
        None => Payloads::Lines(tokio::io::BufReader::new(tokio::io::stdin()).lines()),
    };
    let mut pace = args.rate.map(|hz| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / hz));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let mut acks: std::collections::VecDeque<PendingAck> = Default::default();
    let (mut sent, mut last_offset) = (0u64, 0u64);
    while let Some(payload) = payloads.next().await? {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        if args.datagram {
            client
                .emit_datagram(&args.room, &args.event, payload)
                .await?;
        } else {
            let pending = client.emit_acked(&args.room, &args.event, payload).await?;
            if args.ack {
                last_offset = pending.wait().await?;
                println!("{last_offset}");
            } else {
                acks.push_back(pending);
            }
            if acks.len() >= ACK_WINDOW {
                if let Some(oldest) = acks.pop_front() {
                    last_offset = oldest.wait().await?;
                }
            }
        }
        sent += 1;
    }
    // Exit 0 only once the server has every reliable event.
    while let Some(ack) = acks.pop_front() {
        last_offset = ack.wait().await?;
    }
    if args.datagram {
        client.ping().await?;
        eprintln!("sent {sent} datagrams to {}", args.room);
    } else {
        eprintln!(
            "published {sent} reliable events to {} (last offset {last_offset})",
            args.room
        );
    }
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quicbus::client::Delivery;

    fn event(delivery: Delivery, payload: &'static [u8]) -> Event {
        Event {
            room: "r".into(),
            name: "e".into(),
            delivery,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn json_lines_have_the_documented_shape() {
        let text = event_json(&event(Delivery::Reliable { offset: 7 }, b"hi")).unwrap();
        assert_eq!(
            text,
            r#"{"type":"event","room":"r","event":"e","delivery":"reliable","offset":7,"payload":"hi"}"#
        );
        let binary = event_json(&event(Delivery::Datagram { seq: 3 }, &[0xff, 0x00])).unwrap();
        assert_eq!(
            binary,
            r#"{"type":"event","room":"r","event":"e","delivery":"datagram","seq":3,"payload_b64":"/wA="}"#
        );
    }
}
