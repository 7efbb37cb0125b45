//! Connecting: TLS trust, the QUIC handshake, and `Hello` → `Welcome`.

use std::net::SocketAddr;

use tokio::time::timeout;

use super::{closed_or_lost, ClientError, ClientOptions, Trust};
use crate::tls;
use crate::wire::{self, ErrorCode, Frame, FrameReader, Resume, ResumeOutcome};

/// A connection whose quicbus handshake is complete.
pub(crate) struct Established {
    pub conn: quinn::Connection,
    pub endpoint: quinn::Endpoint,
    pub control_send: quinn::SendStream,
    pub control: FrameReader,
    pub session_id: u64,
    /// The server's frame limit, from `Welcome`.
    pub max_frame: usize,
    /// The server's history epoch.
    pub epoch: u64,
    /// The token to resume this session with.
    pub resume_token: String,
    /// What became of the resume asked for.
    pub resumed: ResumeOutcome,
}

struct Welcomed {
    session_id: u64,
    max_frame: usize,
    epoch: u64,
    resume_token: String,
    resumed: ResumeOutcome,
}

/// Connects to `server`, verifies it and exchanges `Hello`/`Welcome`, all
/// within `options.connect_timeout`.
pub(crate) async fn establish(
    options: &ClientOptions,
    server: SocketAddr,
    token: Option<String>,
    resume: Option<Resume>,
) -> Result<Established, ClientError> {
    let roots = match &options.trust {
        Trust::CaFile(path) => tls::load_certs(path).map_err(|e| {
            let hint = if path.exists() {
                ""
            } else {
                " (`quicbus serve` creates it on first run, or run `quicbus certs`)"
            };
            ClientError::Tls(format!("cannot load the trusted CA: {e}{hint}"))
        })?,
        Trust::CaPem(pem) => tls::parse_certs(pem)?,
        Trust::Certificates(certs) => certs.clone(),
    };
    let config = tls::client_config(&roots, &options.transport)?;
    let endpoint = match &options.endpoint {
        Some(shared) => shared.clone(),
        // Each connection owns an endpoint, bound in the family of the
        // address dialled (servers may differ in family).
        None => {
            let bind: SocketAddr = if server.is_ipv6() {
                "[::]:0".parse().expect("valid literal")
            } else {
                "0.0.0.0:0".parse().expect("valid literal")
            };
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Socket(e.to_string()))?
        }
    };

    let handshake = async {
        let connecting = endpoint
            .connect_with(config, server, &options.server_name)
            .map_err(|e| ClientError::Handshake {
                server,
                reason: e.to_string(),
            })?;
        let conn = connecting.await.map_err(|e| match e {
            quinn::ConnectionError::ApplicationClosed(_) => ClientError::from_connection(&e),
            other => {
                let mut reason = other.to_string();
                if reason.contains("certificate") {
                    reason.push_str(
                        " (is the trusted CA the one that signed the server's certificate?)",
                    );
                }
                ClientError::Handshake { server, reason }
            }
        })?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::from_connection(&e))?;
        let mut reader = FrameReader::new(recv, options.max_frame);
        let mut send = send;
        let hello = wire::encode_framed(&Frame::Hello {
            version: options.protocol_version,
            token: token.clone(),
            client_name: options.client_name.clone(),
            resume: resume.clone(),
            copies: options.copies,
        });
        send.write_all(&hello)
            .await
            .map_err(|_| closed_or_lost(&conn))?;
        let first = reader.next().await;
        let welcome = match first {
            Ok(Some(Frame::Welcome {
                session_id,
                max_frame,
                epoch,
                resume_token,
                resumed,
                ..
            })) => Welcomed {
                session_id,
                max_frame: max_frame as usize,
                epoch,
                resume_token,
                resumed,
            },
            Ok(Some(Frame::Reject {
                code: ErrorCode::UnsupportedVersion,
                server_version,
                ..
            })) => {
                return Err(ClientError::VersionMismatch {
                    client: options.protocol_version,
                    server: server_version,
                })
            }
            Ok(Some(Frame::Reject { code, reason, .. })) => {
                return Err(ClientError::Rejected { code, reason })
            }
            Ok(Some(other)) => {
                return Err(ClientError::Protocol(format!(
                    "expected Welcome, got {}",
                    other.name()
                )))
            }
            Ok(None) | Err(_) => return Err(closed_or_lost(&conn)),
        };
        Ok::<_, ClientError>((conn, send, reader, welcome))
    };
    let (conn, control_send, control, welcomed) = timeout(options.connect_timeout, handshake)
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            server,
            after: options.connect_timeout,
        })??;
    Ok(Established {
        conn,
        endpoint,
        control_send,
        control,
        session_id: welcomed.session_id,
        max_frame: welcomed.max_frame,
        epoch: welcomed.epoch,
        resume_token: welcomed.resume_token,
        resumed: welcomed.resumed,
    })
}
