//! A stored upstream response: the body byte for byte, its content type, when it was
//! fetched and under which invalidation generation, plus the signed encoding it has in
//! Redis.
//!
//! Redis is shared and reachable over the network, so what comes back from it is not
//! trusted: a value is served only if it carries a valid HMAC-SHA256 tag made with
//! booksvc's signing key over the key it is stored under and every field, its content type
//! is JSON and its body is within the size cap. A value planted by anyone else, one copied
//! from another key, an older format or a truncated value is refused.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::key::CacheKey;

/// The last good answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub body: Bytes,
    pub content_type: String,
    pub fetched_at: SystemTime,
    /// The invalidation generation seen before the fetch started (see `generation`): an
    /// entry from an older generation may predate a write, and is never served.
    pub generation: u64,
}

/// Format version, first line of every value, so a later format can be told apart.
const FORMAT: &str = "v2";
/// Bytes of an HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;
/// A signing key shorter than this is refused: it would be guessable.
pub const MIN_SIGNING_KEY_BYTES: usize = 16;

/// The key booksvc signs its Redis values with, ready to use. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

impl SigningKey {
    /// A configured key (`CACHE_SIGNING_KEY`), shared by every replica.
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() < MIN_SIGNING_KEY_BYTES {
            return Err(format!(
                "the cache signing key must be at least {MIN_SIGNING_KEY_BYTES} bytes"
            ));
        }
        Hmac::<Sha256>::new_from_slice(key)
            .map(Self)
            .map_err(|err| format!("unusable cache signing key: {err}"))
    }

    /// A random key known only to this process.
    pub fn random() -> Result<Self, String> {
        let mut key = [0u8; TAG_BYTES];
        getrandom::fill(&mut key)
            .map_err(|err| format!("no randomness for a signing key: {err}"))?;
        Self::new(&key)
    }

    fn mac(&self, key: &CacheKey, stored: &StoredResponse, millis: u64) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        // Every field but the last is length-prefixed, so no two values share an input.
        let field = |mac: &mut Hmac<Sha256>, bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(&mut mac, FORMAT.as_bytes());
        field(&mut mac, key.as_str().as_bytes());
        mac.update(&stored.generation.to_be_bytes());
        mac.update(&millis.to_be_bytes());
        field(&mut mac, stored.content_type.as_bytes());
        mac.update(&stored.body);
        mac
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// Whether a content type is JSON (`application/json`, or a `+json` type).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl StoredResponse {
    /// Whole seconds since it was fetched (the `Age` header); never negative.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.fetched_at)
            .unwrap_or(Duration::ZERO)
    }

    /// `v2\n<tag, hex>\n<generation>\n<fetched at, ms since the epoch>\n<content type>\n
    /// <body>`: short text lines and the body untouched, so it comes back byte for byte.
    pub fn encode(&self, key: &CacheKey, signing: &SigningKey) -> Vec<u8> {
        let millis = self
            .fetched_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        let millis = u64::try_from(millis).unwrap_or(u64::MAX);
        let tag = hex::encode(signing.mac(key, self, millis).finalize().into_bytes());
        let mut value = format!(
            "{FORMAT}\n{tag}\n{}\n{millis}\n{}\n",
            self.generation, self.content_type
        )
        .into_bytes();
        value.extend_from_slice(&self.body);
        value
    }

    /// The value stored under `key`, if booksvc signed it and it is a JSON body of at most
    /// `max_body_bytes`.
    pub fn decode(
        value: &[u8],
        key: &CacheKey,
        signing: &SigningKey,
        max_body_bytes: usize,
    ) -> Result<Self, String> {
        let mut rest = value;
        let mut line = || -> Result<&str, String> {
            let end = rest
                .iter()
                .take(256)
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
        let tag = hex::decode(line()?).map_err(|_| "the tag is not hex")?;
        if tag.len() != TAG_BYTES {
            return Err("the tag has the wrong length".into());
        }
        let generation: u64 = line()?.parse().map_err(|_| "bad generation")?;
        let millis: u64 = line()?.parse().map_err(|_| "bad timestamp")?;
        let content_type = line()?.to_owned();
        if rest.len() > max_body_bytes {
            return Err(format!("the body is over {max_body_bytes} bytes"));
        }
        let stored = Self {
            body: Bytes::copy_from_slice(rest),
            content_type,
            fetched_at: UNIX_EPOCH + Duration::from_millis(millis),
            generation,
        };
        // `verify_slice` compares in constant time.
        signing
            .mac(key, &stored, millis)
            .verify_slice(&tag)
            .map_err(|_| "the tag does not match: not written by booksvc")?;
        if !is_json(&stored.content_type) {
            return Err(format!(
                "content type {:?} is not JSON",
                stored.content_type
            ));
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn key() -> CacheKey {
        CacheKey::new("GET", "/books/1")
    }

    fn signing() -> SigningKey {
        SigningKey::new(b"a signing key for the tests").unwrap()
    }

    fn book() -> StoredResponse {
        StoredResponse {
            body: Bytes::from_static(b"{\"id\":1,\"title\":\"One\\nbook\"}"),
            content_type: "application/json".into(),
            fetched_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            generation: 42,
        }
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let value = book().encode(&key(), &signing());
        assert_eq!(
            StoredResponse::decode(&value, &key(), &signing(), MAX),
            Ok(book())
        );
    }

    #[test]
    fn a_value_booksvc_did_not_sign_is_refused() {
        let value = book().encode(&key(), &signing());
        let decode = |value: &[u8]| StoredResponse::decode(value, &key(), &signing(), MAX);

        let other_key = SigningKey::new(b"somebody else's key").unwrap();
        assert!(
            decode(&book().encode(&key(), &other_key)).is_err(),
            "other key"
        );
        let moved = book().encode(&CacheKey::new("GET", "/books/2"), &signing());
        assert!(decode(&moved).is_err(), "copied from another cache key");
        let mut forged = value.clone();
        *forged.last_mut().unwrap() = b']';
        assert!(decode(&forged).is_err(), "body changed");
        let regenerated = String::from_utf8(value.clone())
            .unwrap()
            .replacen("\n42\n", "\n43\n", 1);
        assert!(
            decode(regenerated.as_bytes()).is_err(),
            "generation changed"
        );
        assert!(decode(&value[..value.len() - 1]).is_err(), "truncated body");
        assert!(decode(&value[..20]).is_err(), "truncated header");
        assert!(
            decode(b"v1\n1700000000123\napplication/json\n[]").is_err(),
            "old format"
        );
        assert!(decode(b"").is_err());
    }

    #[test]
    fn only_json_within_the_cap_is_accepted() {
        let text = StoredResponse {
            content_type: "text/html".into(),
            ..book()
        };
        let value = text.encode(&key(), &signing());
        assert!(StoredResponse::decode(&value, &key(), &signing(), MAX).is_err());
        let value = book().encode(&key(), &signing());
        let len = book().body.len();
        assert!(StoredResponse::decode(&value, &key(), &signing(), len).is_ok());
        assert!(StoredResponse::decode(&value, &key(), &signing(), len - 1).is_err());
    }

    #[test]
    fn json_content_types() {
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "Application/JSON",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in ["text/plain", "text/json", "application/jsonp", ""] {
            assert!(!is_json(other), "{other}");
        }
    }

    #[test]
    fn short_signing_keys_are_refused() {
        assert!(SigningKey::new(b"short").is_err());
        assert!(SigningKey::random().is_ok());
        assert_eq!(format!("{:?}", signing()), "SigningKey(..)");
    }

    #[test]
    fn age_is_never_negative() {
        let now = SystemTime::now();
        let stored = StoredResponse {
            fetched_at: now + Duration::from_secs(5),
            ..book()
        };
        assert_eq!(stored.age(now), Duration::ZERO);
        let stored = StoredResponse {
            fetched_at: now - Duration::from_secs(42),
            ..stored
        };
        assert_eq!(stored.age(now).as_secs(), 42);
    }
}
