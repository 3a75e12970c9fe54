//! A TCP proxy that counts the statements and round trips a client sends to PostgreSQL or
//! MySQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the counting proxy saw.
#[derive(Default)]
pub struct Counts {
    /// Statements executed (a text query of several counts each).
    pub statements: AtomicU64,
    /// Requests answered by the server, pool pings left out.
    pub round_trips: AtomicU64,
}

impl Counts {
    pub fn take(&self) -> (u64, u64) {
        (
            self.statements.swap(0, Ordering::SeqCst),
            self.round_trips.swap(0, Ordering::SeqCst),
        )
    }
}

fn statements_in(sql: &[u8]) -> u64 {
    String::from_utf8_lossy(sql)
        .split(';')
        .filter(|s| !s.trim().trim_end_matches('\0').trim().is_empty())
        .count() as u64
}

/// A TCP proxy to `127.0.0.1:upstream` on a port of its own, counting the statements and
/// round trips clients send (PostgreSQL's or MySQL's protocol).
pub async fn counting_proxy(upstream: u16, mysql: bool, counts: Arc<Counts>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                let mut started = false;
                let mut executed_since_sync = false;
                loop {
                    let n = match client_read.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if server_write.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    // Count every complete message in the buffer.
                    loop {
                        if mysql {
                            if buffer.len() < 4 {
                                break;
                            }
                            let len =
                                u32::from_le_bytes([buffer[0], buffer[1], buffer[2], 0]) as usize;
                            if buffer.len() < 4 + len {
                                break;
                            }
                            let (seq, payload) = (buffer[3], &buffer[4..4 + len]);
                            // Commands start a sequence; the handshake's answers do not.
                            if seq == 0 && !payload.is_empty() {
                                match payload[0] {
                                    0x03 => {
                                        counts.statements.fetch_add(
                                            statements_in(&payload[1..]),
                                            Ordering::Relaxed,
                                        );
                                        counts.round_trips.fetch_add(1, Ordering::Relaxed);
                                    }
                                    0x17 => {
                                        counts.statements.fetch_add(1, Ordering::Relaxed);
                                        counts.round_trips.fetch_add(1, Ordering::Relaxed);
                                    }
                                    0x16 => {
                                        counts.round_trips.fetch_add(1, Ordering::Relaxed);
                                    }
                                    _ => {}
                                }
                            }
                            buffer.drain(..4 + len);
                        } else {
                            if !started {
                                // The startup message has a length and no type byte.
                                if buffer.len() < 4 {
                                    break;
                                }
                                let len = u32::from_be_bytes([
                                    buffer[0], buffer[1], buffer[2], buffer[3],
                                ]) as usize;
                                if buffer.len() < len {
                                    break;
                                }
                                buffer.drain(..len);
                                started = true;
                                continue;
                            }
                            if buffer.len() < 5 {
                                break;
                            }
                            let len =
                                u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]])
                                    as usize;
                            if buffer.len() < 1 + len {
                                break;
                            }
                            match buffer[0] {
                                b'Q' => {
                                    counts.statements.fetch_add(
                                        statements_in(&buffer[5..1 + len]),
                                        Ordering::Relaxed,
                                    );
                                    counts.round_trips.fetch_add(1, Ordering::Relaxed);
                                }
                                b'E' => {
                                    counts.statements.fetch_add(1, Ordering::Relaxed);
                                    executed_since_sync = true;
                                }
                                // A Sync after an Execute ends a round trip; a lone Sync is
                                // the pool's ping.
                                b'S' if std::mem::take(&mut executed_since_sync) => {
                                    counts.round_trips.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {}
                            }
                            buffer.drain(..1 + len);
                        }
                    }
                }
            });
        }
    });
    port
}
