//! HTTP Basic credentials (RFC 7617) checked against configured users whose passwords are
//! stored as Argon2 hashes in PHC string form (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
//!
//! A slow hash is the point of a password hash, and also a CPU sink: verified on every
//! request it would let anyone who can reach the port burn the service's cores. So:
//! - a successful verification is remembered for [`VERIFIED_TTL`], keyed by the SHA-256 of
//!   the presented header value (never the password itself), in a cache bounded to
//!   [`VERIFIED_CAPACITY`] entries: a client that repeats its credential costs one hash per
//!   TTL, not one per request;
//! - at most [`MAX_CONCURRENT_VERIFICATIONS`] hashes run at once, off the async workers, so
//!   a flood of wrong passwords queues instead of starving every other request;
//! - an unknown user name is verified against a dummy hash, so response timing does not
//!   tell which user names exist.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// How long a successful verification is trusted without hashing again.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// How many verified credentials are remembered at most.
pub const VERIFIED_CAPACITY: u64 = 1024;
/// How many password hashes may be computed at the same time.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 2;

/// The configured users. Cloning is cheap; clones share the cache of verifications.
#[derive(Clone)]
pub struct BasicUsers {
    inner: Arc<Inner>,
}

struct Inner {
    /// User name to PHC string, each checked to parse when configured.
    users: HashMap<String, String>,
    /// Verified when the user name is unknown, so that case takes as long as a wrong password.
    dummy_hash: String,
    verified: moka::future::Cache<[u8; 32], ()>,
    verifying: Semaphore,
}

/// A `user:hash` list that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BasicUsersError {
    #[error("entry {0} is not `user:hash` (entries are separated by `;` or whitespace)")]
    NotUserAndHash(usize),
    #[error("user `{0}` is listed twice")]
    Duplicate(String),
    #[error("the hash of user `{0}` is not an Argon2 PHC string (make one with `hash-password`)")]
    NotArgon2(String),
    #[error("could not make a password hash: {0}")]
    Hashing(String),
}

impl BasicUsers {
    /// Parses `user:hash` entries separated by `;` or whitespace. PHC strings contain `,`
    /// and `$` but never `;` or spaces, and a user name cannot contain `:` (RFC 7617), so
    /// the first `:` of an entry ends the name.
    pub fn parse(spec: &str) -> Result<Self, BasicUsersError> {
        let mut users = HashMap::new();
        let entries = spec
            .split(|c: char| c == ';' || c.is_whitespace())
            .filter(|entry| !entry.is_empty());
        for (index, entry) in entries.enumerate() {
            let (user, hash) = entry
                .split_once(':')
                .filter(|(user, hash)| !user.is_empty() && !hash.is_empty())
                .ok_or(BasicUsersError::NotUserAndHash(index + 1))?;
            let is_argon2 = PasswordHash::new(hash)
                .is_ok_and(|parsed| parsed.algorithm.as_str().starts_with("argon2"));
            if !is_argon2 {
                return Err(BasicUsersError::NotArgon2(user.to_owned()));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(BasicUsersError::Duplicate(user.to_owned()));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                users,
                dummy_hash: hash_password("a password nobody has")?,
                verified: moka::future::Cache::builder()
                    .max_capacity(VERIFIED_CAPACITY)
                    .time_to_live(VERIFIED_TTL)
                    .build(),
                verifying: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            }),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.inner.users.is_empty()
    }

    /// The configured user names, for the start-up log.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.users.keys().map(String::as_str)
    }

    /// Whether `credentials` (what follows `Basic ` in the header) name a configured user
    /// with the right password.
    pub async fn verify(&self, credentials: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(credentials.as_bytes()).into();
        if self.inner.verified.contains_key(&key) {
            return true;
        }
        let Some((user, password)) = decode(credentials) else {
            return false;
        };
        let (hash, known) = match self.inner.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (self.inner.dummy_hash.clone(), false),
        };
        let Ok(_permit) = self.inner.verifying.acquire().await else {
            return false;
        };
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if matches && known {
            self.inner.verified.insert(key, ()).await;
        }
        matches && known
    }
}

impl std::fmt::Debug for BasicUsers {
    /// User names only: the hashes stay out of logs and error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        f.debug_struct("BasicUsers").field("users", &names).finish()
    }
}

/// `user:password` from base64; `None` when it is not that.
fn decode(credentials: &str) -> Option<(String, String)> {
    let bytes = STANDARD.decode(credentials.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Argon2 compares the derived hash in constant time.
fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A PHC string for `password`: Argon2id with the crate's default (OWASP) parameters and a
/// random salt, the form `AUTH_BASIC_USERS` takes.
pub fn hash_password(password: &str) -> Result<String, BasicUsersError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| BasicUsersError::Hashing(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        STANDARD.encode(format!("{user}:{password}"))
    }

    #[tokio::test]
    async fn accepts_configured_users_with_their_password_only() {
        let alice = hash_password("wonderland").unwrap();
        let bob = hash_password("builder").unwrap();
        // PHC strings contain commas: `;` and whitespace both separate entries.
        assert!(alice.contains(','));
        let users = BasicUsers::parse(&format!("alice:{alice};\n bob:{bob}")).unwrap();
        assert!(users.verify(&header("alice", "wonderland")).await);
        assert!(users.verify(&header("bob", "builder")).await);
        assert!(!users.verify(&header("alice", "builder")).await);
        assert!(!users.verify(&header("carol", "wonderland")).await);
        assert!(!users.verify(&header("alice", "")).await);
        assert!(!users.verify("not base64!").await);
        assert!(!users.verify(&STANDARD.encode("no colon")).await);
    }

    #[tokio::test]
    async fn a_cached_success_is_not_a_shortcut_for_other_passwords() {
        let users =
            BasicUsers::parse(&format!("alice:{}", hash_password("right").unwrap())).unwrap();
        assert!(users.verify(&header("alice", "right")).await);
        assert!(users.verify(&header("alice", "right")).await);
        users.inner.verified.run_pending_tasks().await;
        assert_eq!(users.inner.verified.entry_count(), 1);
        assert!(!users.verify(&header("alice", "wrong")).await);
    }

    #[test]
    fn a_password_may_contain_colons() {
        assert_eq!(
            decode(&header("alice", "a:b:c")),
            Some(("alice".into(), "a:b:c".into()))
        );
    }

    #[test]
    fn malformed_lists_are_refused_with_the_reason() {
        let hash = hash_password("x").unwrap();
        assert_eq!(
            BasicUsers::parse("alice").unwrap_err(),
            BasicUsersError::NotUserAndHash(1)
        );
        assert_eq!(
            BasicUsers::parse("alice:plaintext").unwrap_err(),
            BasicUsersError::NotArgon2("alice".into())
        );
        assert_eq!(
            BasicUsers::parse(&format!("a:{hash} a:{hash}")).unwrap_err(),
            BasicUsersError::Duplicate("a".into())
        );
        assert!(BasicUsers::parse(" ; ").unwrap().is_empty());
    }

    #[test]
    fn debug_shows_names_not_hashes() {
        let hash = hash_password("x").unwrap();
        let shown = format!("{:?}", BasicUsers::parse(&format!("alice:{hash}")).unwrap());
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("argon2"), "{shown}");
    }
}
