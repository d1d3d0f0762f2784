//! OAuth2 access tokens as JWTs (RFC 9068), verified by the service itself with the
//! authorization server's public key: no call to the authorization server per request.
//!
//! A token is accepted when its signature verifies with the configured key under the one
//! configured asymmetric algorithm (ES256 by default; ES384, RS256/384/512, PS256/384/512
//! and EdDSA also), its header says `typ: at+jwt`, and its claims carry the configured
//! `iss`, an `aud` that includes the configured audience, and an `exp` in the future
//! (`nbf`, when present, in the past), both with [`LEEWAY`] for clock skew.
//!
//! The algorithm is pinned by configuration, never taken from the token, and shared-secret
//! (HS*) algorithms are refused: whoever could verify such a token could also mint one.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The header `typ` values RFC 9068 (section 4) lets a resource server accept.
const ACCESS_TOKEN_TYPES: [&str; 2] = ["at+jwt", "application/at+jwt"];

/// Verifies access tokens of one issuer for one audience. Cloning is cheap.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    key: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    algorithm: Algorithm,
}

/// Settings that cannot verify anything.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error(
        "`{0}` is not a supported JWT algorithm (use ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512 or EdDSA)"
    )]
    UnknownAlgorithm(String),
    #[error("`{0}` uses a shared secret; an access token must be verified with a public key")]
    SharedSecret(String),
    #[error("the public key is not a PEM {family} public key: {reason}")]
    BadKey {
        family: &'static str,
        reason: String,
    },
    #[error("the JWT issuer and audience must not be empty")]
    EmptyClaim,
}

/// Why a token was refused; for the log only, never for the caller.
#[derive(Debug, thiserror::Error)]
pub enum JwtRefusal {
    #[error("the token's typ is {0:?}, not at+jwt")]
    NotAnAccessToken(Option<String>),
    #[error("{0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

impl JwtVerifier {
    pub fn new(
        issuer: &str,
        audience: &str,
        algorithm: &str,
        public_key_pem: &[u8],
    ) -> Result<Self, JwtConfigError> {
        let (issuer, audience) = (issuer.trim(), audience.trim());
        if issuer.is_empty() || audience.is_empty() {
            return Err(JwtConfigError::EmptyClaim);
        }
        let algorithm: Algorithm = algorithm
            .trim()
            .parse()
            .map_err(|_| JwtConfigError::UnknownAlgorithm(algorithm.to_owned()))?;
        let bad_key = |family| {
            move |err: jsonwebtoken::errors::Error| JwtConfigError::BadKey {
                family,
                reason: err.to_string(),
            }
        };
        let key = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(JwtConfigError::SharedSecret(format!("{algorithm:?}")));
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                DecodingKey::from_ec_pem(public_key_pem).map_err(bad_key("EC"))?
            }
            Algorithm::EdDSA => {
                DecodingKey::from_ed_pem(public_key_pem).map_err(bad_key("Ed25519"))?
            }
            _ => DecodingKey::from_rsa_pem(public_key_pem).map_err(bad_key("RSA"))?,
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY.as_secs();
        Ok(Self {
            inner: Arc::new(Inner {
                key,
                validation,
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                algorithm,
            }),
        })
    }

    /// Checks `token`: signature, `typ`, `iss`, `aud`, `exp` and `nbf`.
    pub fn verify(&self, token: &str) -> Result<(), JwtRefusal> {
        let header = jsonwebtoken::decode_header(token)?;
        let is_access_token = header.typ.as_deref().is_some_and(|typ| {
            ACCESS_TOKEN_TYPES
                .iter()
                .any(|accepted| typ.eq_ignore_ascii_case(accepted))
        });
        if !is_access_token {
            return Err(JwtRefusal::NotAnAccessToken(header.typ));
        }
        jsonwebtoken::decode::<serde_json::Value>(token, &self.inner.key, &self.inner.validation)?;
        Ok(())
    }
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("algorithm", &self.inner.algorithm)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISSUER: &str = "https://issuer.test";
    const AUDIENCE: &str = "storagesvc";

    /// A fresh P-256 key pair: the verifier and a function that signs claims with it.
    fn verifier_and_signer() -> (JwtVerifier, impl Fn(&str, serde_json::Value) -> String) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let verifier =
            JwtVerifier::new(ISSUER, AUDIENCE, "ES256", pair.public_key_pem().as_bytes()).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let sign = move |typ: &str, claims: serde_json::Value| {
            let mut header = Header::new(Algorithm::ES256);
            header.typ = Some(typ.to_owned());
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        };
        (verifier, sign)
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    #[test]
    fn accepts_a_valid_access_token_and_refuses_every_broken_claim() {
        let (verifier, sign) = verifier_and_signer();
        let claims = |iss: &str, aud: serde_json::Value, exp: i64| json!({"iss": iss, "aud": aud, "exp": exp, "sub": "booksvc", "client_id": "booksvc"});
        let valid = sign("at+jwt", claims(ISSUER, json!(AUDIENCE), now() + 300));
        assert!(verifier.verify(&valid).is_ok());
        let several_audiences = sign(
            "at+jwt",
            claims(ISSUER, json!(["other", AUDIENCE]), now() + 300),
        );
        assert!(verifier.verify(&several_audiences).is_ok());

        let refused = [
            (
                "expired",
                sign("at+jwt", claims(ISSUER, json!(AUDIENCE), now() - 300)),
            ),
            (
                "other issuer",
                sign(
                    "at+jwt",
                    claims("https://evil.test", json!(AUDIENCE), now() + 300),
                ),
            ),
            (
                "other audience",
                sign("at+jwt", claims(ISSUER, json!("booksvc"), now() + 300)),
            ),
            (
                "not an access token",
                sign("JWT", claims(ISSUER, json!(AUDIENCE), now() + 300)),
            ),
            (
                "no audience",
                sign("at+jwt", json!({"iss": ISSUER, "exp": now() + 300})),
            ),
            (
                "no expiry",
                sign("at+jwt", json!({"iss": ISSUER, "aud": AUDIENCE})),
            ),
            (
                "not yet valid",
                sign(
                    "at+jwt",
                    json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "nbf": now() + 300}),
                ),
            ),
            ("garbage", "a.b.c".to_owned()),
        ];
        for (case, token) in refused {
            assert!(verifier.verify(&token).is_err(), "{case} was accepted");
        }
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let (verifier, _) = verifier_and_signer();
        let (_, other_signer) = verifier_and_signer();
        let token = other_signer(
            "at+jwt",
            json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300}),
        );
        assert!(verifier.verify(&token).is_err());
    }

    #[test]
    fn expiry_has_a_small_leeway() {
        let (verifier, sign) = verifier_and_signer();
        let just_expired = sign(
            "at+jwt",
            json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() - 5}),
        );
        assert!(verifier.verify(&just_expired).is_ok());
    }

    #[test]
    fn shared_secret_and_unknown_algorithms_are_refused() {
        assert!(matches!(
            JwtVerifier::new("i", "a", "HS256", b"secret"),
            Err(JwtConfigError::SharedSecret(_))
        ));
        assert!(matches!(
            JwtVerifier::new("i", "a", "none", b""),
            Err(JwtConfigError::UnknownAlgorithm(_))
        ));
        assert!(matches!(
            JwtVerifier::new("i", "a", "ES256", b"not a key"),
            Err(JwtConfigError::BadKey { family: "EC", .. })
        ));
        assert!(matches!(
            JwtVerifier::new(" ", "a", "ES256", b""),
            Err(JwtConfigError::EmptyClaim)
        ));
    }
}
