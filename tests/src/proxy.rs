//! A TCP proxy that can hold answers back: it forwards requests at once, but bytes coming
//! back from the upstream wait while a hold is on. So a test can make a request succeed
//! upstream while its caller sees no answer in time: the lost response that only an
//! idempotency key makes safe to retry.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running proxy to one upstream. Dropping it stops accepting.
pub struct HoldingProxy {
    pub address: SocketAddr,
    hold_until: Arc<Mutex<Option<Instant>>>,
    accept: JoinHandle<()>,
}

impl HoldingProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let hold_until = Arc::new(Mutex::new(None));
        let hold = Arc::clone(&hold_until);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, Arc::clone(&hold)));
            }
        });
        Self {
            address,
            hold_until,
            accept,
        }
    }

    /// Bytes from the upstream arriving within `duration` from now are passed on only when
    /// it has passed.
    pub fn hold_answers_for(&self, duration: Duration) {
        *self.hold_until.lock().unwrap() = Some(Instant::now() + duration);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, hold: Arc<Mutex<Option<Instant>>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let answers = async {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let read = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let held = *hold.lock().unwrap();
            if let Some(until) = held {
                tokio::time::sleep_until(until).await;
            }
            if client_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, answers);
}
