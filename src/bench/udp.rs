//! The raw-UDP echo on loopback every benchmark is compared with.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{histogram, record, BenchError, Progress};

/// How long the echo waits for a packet before it gives up.
const ECHO_IDLE: Duration = Duration::from_secs(2);

/// Round trips of `size`-byte packets to an echo thread: `warmup` unmeasured,
/// then `samples` measured, one in flight. A packet lost on loopback (rare)
/// is given up after 100 ms and the next one sent.
pub fn udp_echo(
    samples: u64,
    warmup: u64,
    size: usize,
    progress: &Progress,
) -> Result<Histogram<u64>, BenchError> {
    let server = UdpSocket::bind("127.0.0.1:0").map_err(BenchError::io("binding UDP echo"))?;
    let addr = server
        .local_addr()
        .map_err(BenchError::io("UDP echo address"))?;
    server
        .set_read_timeout(Some(ECHO_IDLE))
        .map_err(BenchError::io("UDP echo timeout"))?;
    // The echo stops after ECHO_IDLE without packets, or after every round trip.
    let total = warmup + samples;
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
    let client = UdpSocket::bind("127.0.0.1:0").map_err(BenchError::io("binding UDP client"))?;
    client
        .connect(addr)
        .map_err(BenchError::io("UDP connect"))?;
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(BenchError::io("UDP client timeout"))?;
    let mut payload = vec![0u8; size.max(8)];
    let mut buf = vec![0u8; 65_536];
    let mut h = histogram();
    for i in 0..total {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        let started = Instant::now();
        client.send(&payload).map_err(BenchError::io("UDP send"))?;
        // Skip stale echoes of packets already given up.
        loop {
            match client.recv(&mut buf) {
                Ok(len) if len >= 8 && buf[..8] == i.to_le_bytes() => {
                    if i >= warmup {
                        record(&mut h, started.elapsed());
                    }
                    break;
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(BenchError::io("UDP receive")(e)),
            }
        }
        progress.tick(i + 1, total);
    }
    let _ = echo.join();
    Ok(h)
}
