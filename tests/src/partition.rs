//! A network partition on this host: every packet to a local TCP port is dropped
//! (iptables on the loopback interface), so connecting to it and reading from connections
//! already open both hang. Nothing is refused or reset: the gray failure a stopped process
//! never shows.
//!
//! Needs root and `iptables`; without them the test fails with the reason (it is never
//! skipped). The rule is removed when the [`Partition`] is dropped, so a failing test
//! leaves the host as it found it.

use std::process::Command;

/// Packets to `127.0.0.1:port` are dropped while this lives.
pub struct Partition {
    port: u16,
}

impl Partition {
    pub fn drop_packets_to(port: u16) -> Self {
        iptables("-I", port).unwrap_or_else(|err| {
            panic!("cannot partition port {port} (the test needs root and iptables): {err}")
        });
        Self { port }
    }

    /// Ends the partition: packets flow again.
    pub fn heal(self) {}
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(err) = iptables("-D", self.port) {
            eprintln!("removing the partition of port {}: {err}", self.port);
        }
    }
}

fn iptables(action: &str, port: u16) -> Result<(), String> {
    let port = port.to_string();
    let output = Command::new("iptables")
        .args([
            "-w", action, "INPUT", "-i", "lo", "-p", "tcp", "--dport", &port,
        ])
        .args(["-j", "DROP"])
        .output()
        .map_err(|err| format!("running iptables: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}
