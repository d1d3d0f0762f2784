//! HTTP/1.1 requests written byte for byte on a TCP socket: HTTP clients normalise paths
//! (`..`, `%2e`, backslashes), and the tests of hostile input must send them unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The answer to one raw request: its status and everything after the status line.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub text: String,
}

/// Sends `GET <target>` exactly as given, on its own connection, and reads the answer
/// (bounded: a hang fails the test).
pub async fn get(address: SocketAddr, target: &str) -> RawResponse {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    send(address, request.as_bytes()).await
}

/// Sends `request` as it is and reads until the server closes the connection.
pub async fn send(address: SocketAddr, request: &[u8]) -> RawResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server answers within 10 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP/1.1 status line, got {text:?}"));
    RawResponse { status, text }
}
