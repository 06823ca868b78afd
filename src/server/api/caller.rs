//! Who is calling the public listener: the [`Caller`] extractor. A handler that takes a `Caller`
//! runs only for an authenticated user holding one of that user's in-flight slots; whether
//! credentials are checked at all is the [`Authenticator`]'s mode, chosen once at start-up.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::ApiError;
use super::state::PublicState;
use crate::domain::{CredentialError, CredentialKey, UserId};
use crate::server::keyed_cap::KeyedSlot;

/// The user every request is attributed to when auth is switched off.
const ANONYMOUS: &str = "insecure-anonymous";

/// How callers are identified.
pub enum Authenticator {
    /// A valid bearer credential is required.
    Credentials(CredentialCheck),
    /// `--insecure-no-auth` (demos and load tests only): a request with a valid credential is
    /// still its user (so per-user budgets keep working); any other request is the one
    /// anonymous user.
    InsecureNoAuth(CredentialCheck),
}

/// What a credential is checked against.
pub struct CredentialCheck {
    /// Verifies credentials.
    pub key: CredentialKey,
    /// The key being rotated out, still accepted (`--previous-credential-key-file`).
    pub previous: Option<CredentialKey>,
    /// Longest credential lifetime accepted, seconds.
    pub max_ttl_secs: u64,
}

/// An authenticated caller. While it lives it holds one of its user's in-flight slots (not the
/// anonymous user of insecure mode, which every credential-less request shares: capping it
/// would cap everyone).
pub struct Caller {
    /// The credential's user: the rate limit's key, never logged.
    pub user: UserId,
    _slot: Option<KeyedSlot<UserId>>,
}

impl FromRequestParts<PublicState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &PublicState) -> Result<Self, ApiError> {
        let now = state.clock.now_secs();
        let user = match &state.authenticator {
            Authenticator::Credentials(check) => check.verify(&parts.headers, now)?,
            Authenticator::InsecureNoAuth(check) => match check.verify(&parts.headers, now) {
                Ok(user) => user,
                Err(_) => {
                    return Ok(Caller {
                        user: UserId::parse(ANONYMOUS).map_err(|_| ApiError::MissingCredential)?,
                        _slot: None,
                    });
                }
            },
        };
        let slot = state.user_in_flight.enter(&user)?;
        Ok(Caller {
            user,
            _slot: Some(slot),
        })
    }
}

impl CredentialCheck {
    /// Checks the bearer credential of `headers` at `now` and returns its user.
    fn verify(&self, headers: &axum::http::HeaderMap, now: u64) -> Result<UserId, ApiError> {
        if !headers.contains_key(header::AUTHORIZATION) {
            return Err(ApiError::MissingCredential);
        }
        let token =
            bearer_token(headers).ok_or(ApiError::InvalidCredential(CredentialError::Malformed))?;
        let credential = match (
            self.key.verify(token, now, self.max_ttl_secs),
            &self.previous,
        ) {
            // During a key rotation, a MAC that fails under the new key may be from the old one.
            (Err(CredentialError::BadMac), Some(previous)) => {
                previous.verify(token, now, self.max_ttl_secs)?
            }
            (verified, _) => verified?,
        };
        Ok(credential.user)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
