//! The classic socket.io chat, over quicbus. Lines typed on stdin:
//!
//! - `/join ROOM`  join a room (it becomes the room you talk in)
//! - `/leave ROOM` leave a room
//! - `/nick NAME`  change your name
//! - `/quit`       leave
//! - anything else is said in the current room, as a reliable `message`
//!   event whose payload is `NAME: TEXT` (so `quicbus sub` shows it as text)
//!
//! Terminal 1: `cargo run --release -- serve`
//! Terminal 2: `cargo run --release --example chat -- --nick ada`
//! Terminal 3: `cargo run --release --example chat -- --nick bob`
//! (then `/join lobby` in both and talk; `quicbus sub --room lobby` listens in.)
//!
//! On a server with signed tokens (README, "Security"), pass one with
//! `--token T` or `QUICBUS_TOKEN`: `quicbus token --secret-file secret
//! --user ada --publish 'chat.>' --subscribe 'chat.>'`, then `/join chat.lobby`.
//! A room the token does not allow answers `forbidden`.

use clap::Parser;
use quicbus::client::{Client, ClientOptions, Delivery, Incoming, Trust};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: std::net::SocketAddr,
    /// CA that signed the server's certificate.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: std::path::PathBuf,
    /// Your name in the chat.
    #[arg(long, default_value = "anonymous")]
    nick: String,
    /// Signed token for servers that check them (from the environment, it
    /// stays out of `ps`).
    #[arg(long, env = "QUICBUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut options = ClientOptions::new(args.server);
    options.trust = Trust::CaFile(args.ca);
    options.client_name = format!("chat:{}", args.nick);
    options.token = args.token;
    let (client, mut events) = Client::connect(options).await?;
    let mut nick = args.nick;
    let mut current: Option<String> = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    println!("connected; /join ROOM to start talking, /quit to leave");
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                match line.split_once(' ').unwrap_or((line, "")) {
                    ("/quit", _) => break,
                    ("/join", room) if !room.is_empty() => match client.join(room).await {
                        Ok(offset) => {
                            println!("* joined {room} (offset {offset})");
                            current = Some(room.to_string());
                        }
                        Err(e) => println!("* cannot join {room}: {e}"),
                    },
                    ("/leave", room) if !room.is_empty() => match client.leave(room).await {
                        Ok(()) => {
                            println!("* left {room}");
                            if current.as_deref() == Some(room) {
                                current = None;
                            }
                        }
                        Err(e) => println!("* cannot leave {room}: {e}"),
                    },
                    ("/nick", name) if !name.is_empty() => {
                        nick = name.to_string();
                        println!("* you are now {nick}");
                    }
                    (cmd, _) if cmd.starts_with('/') => {
                        println!("* commands: /join ROOM, /leave ROOM, /nick NAME, /quit");
                    }
                    _ => match &current {
                        Some(room) => {
                            let text = format!("{nick}: {line}");
                            if let Err(e) = client.emit_with_ack(room, "message", text).await {
                                println!("* not sent: {e}");
                            }
                        }
                        None => println!("* /join a room first"),
                    },
                }
            }
            incoming = events.next_incoming() => match incoming {
                None => {
                    println!("* disconnected: {}", client.closed().await);
                    break;
                }
                Some(Incoming::Event(event)) => {
                    if let Delivery::Reliable { .. } = event.delivery {
                        println!("[{}] {}", event.room, String::from_utf8_lossy(&event.payload));
                    }
                }
                Some(Incoming::Forbidden { room, action }) => {
                    println!("* forbidden: your token does not allow {action} in {room}");
                }
                Some(_) => {}
            },
        }
    }
    client.close().await;
    Ok(())
}
