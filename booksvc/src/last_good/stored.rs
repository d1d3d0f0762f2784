//! A stored upstream response: the body byte for byte, its content type and when it was
//! fetched, plus the compact encoding it has in Redis.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;

/// The last good answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub body: Bytes,
    pub content_type: String,
    pub fetched_at: SystemTime,
}

/// Format version, first line of every value, so a later format can be told apart.
const FORMAT: &str = "v1";

impl StoredResponse {
    /// Whole seconds since it was fetched (the `Age` header); never negative.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.fetched_at)
            .unwrap_or(Duration::ZERO)
    }

    /// `v1\n<fetched at, ms since the epoch>\n<content type>\n<body>`: three short text
    /// lines and the body untouched, so the body comes back byte for byte.
    pub fn encode(&self) -> Vec<u8> {
        let millis = self
            .fetched_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        let mut value = format!("{FORMAT}\n{millis}\n{}\n", self.content_type).into_bytes();
        value.extend_from_slice(&self.body);
        value
    }

    pub fn decode(value: &[u8]) -> Result<Self, String> {
        let mut rest = value;
        let mut line = || -> Result<&str, String> {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("truncated value")?;
            let text = std::str::from_utf8(&rest[..end]).map_err(|_| "header line is not UTF-8")?;
            rest = &rest[end + 1..];
            Ok(text)
        };
        let format = line()?;
        if format != FORMAT {
            return Err(format!("unknown format {format:?}"));
        }
        let millis: u64 = line()?.parse().map_err(|_| "bad timestamp")?;
        let content_type = line()?.to_owned();
        Ok(Self {
            body: Bytes::copy_from_slice(rest),
            content_type,
            fetched_at: UNIX_EPOCH + Duration::from_millis(millis),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_byte_for_byte() {
        let stored = StoredResponse {
            body: Bytes::from_static(b"[{\"id\":1}]\n\x00\xff binary too"),
            content_type: "application/json".into(),
            fetched_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        assert_eq!(StoredResponse::decode(&stored.encode()), Ok(stored));
    }

    #[test]
    fn rejects_foreign_or_truncated_values() {
        assert!(StoredResponse::decode(b"v2\n1\nx\nbody").is_err());
        assert!(StoredResponse::decode(b"v1\n12").is_err());
        assert!(StoredResponse::decode(b"v1\nsoon\ntext/plain\n").is_err());
    }

    #[test]
    fn age_is_never_negative() {
        let now = SystemTime::now();
        let stored = StoredResponse {
            body: Bytes::new(),
            content_type: String::new(),
            fetched_at: now + Duration::from_secs(5),
        };
        assert_eq!(stored.age(now), Duration::ZERO);
        let stored = StoredResponse {
            fetched_at: now - Duration::from_secs(42),
            ..stored
        };
        assert_eq!(stored.age(now).as_secs(), 42);
    }
}
