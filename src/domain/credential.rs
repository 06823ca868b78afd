//! Caller credentials minted by the messaging backend with a shared key.
//!
//! `<user>.<expiry-unix>.<base64url(keyed_blake3(key, "<user>.<expiry-unix>"))>`: the backend
//! vouches that `user` is one of its accounts until `expiry`. The MAC is compared in constant time
//! (`blake3::Hash` equality is constant-time).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Longest accepted user id.
pub const MAX_USER_LEN: usize = 64;
/// Longest accepted credential text; anything longer is malformed before any parsing.
const MAX_TOKEN_LEN: usize = MAX_USER_LEN + 1 + 20 + 1 + 43;

/// The shared 32-byte credential key. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct CredentialKey([u8; 32]);

impl CredentialKey {
    /// Wraps raw key material.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, user: &str, expiry: u64) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(user.as_bytes());
        hasher.update(b".");
        hasher.update(itoa::Buffer::new().format(expiry).as_bytes());
        hasher.finalize()
    }

    /// Mints a credential for `user` that expires at `expiry` (unix seconds).
    pub fn mint(&self, user: &UserId, expiry: u64) -> String {
        let mac = self.mac(user.as_str(), expiry);
        format!(
            "{}.{}.{}",
            user.as_str(),
            expiry,
            URL_SAFE_NO_PAD.encode(mac.as_bytes())
        )
    }

    /// Checks a credential's form, MAC and lifetime at `now` (unix seconds). `max_ttl` bounds how
    /// far in the future an expiry may lie, so a leaked long-lived token is refused.
    pub fn verify(
        &self,
        token: &str,
        now: u64,
        max_ttl: u64,
    ) -> Result<Credential, CredentialError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(CredentialError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(user), Some(expiry), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CredentialError::Malformed);
        };
        let user = UserId::parse(user).map_err(|_| CredentialError::Malformed)?;
        let expiry = parse_canonical_u64(expiry).ok_or(CredentialError::Malformed)?;
        let mut given = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(mac, &mut given) {
            Ok(32) => {}
            _ => return Err(CredentialError::Malformed),
        }
        if blake3::Hash::from(given) != self.mac(user.as_str(), expiry) {
            return Err(CredentialError::BadMac);
        }
        if expiry <= now {
            return Err(CredentialError::Expired);
        }
        if expiry - now > max_ttl {
            return Err(CredentialError::TooLong);
        }
        Ok(Credential { user, expiry })
    }
}

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(<redacted>)")
    }
}

/// Decimal without sign or leading zeros, so one expiry has exactly one text form.
fn parse_canonical_u64(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Who the backend vouches for.
    pub user: UserId,
    /// When the credential stops being valid (unix seconds).
    pub expiry: u64,
}

/// Why a credential was refused. Carries nothing of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not `<user>.<expiry>.<mac>` in the documented alphabet and lengths.
    #[error("the credential is not of the form <user>.<expiry>.<mac>")]
    Malformed,
    /// The MAC does not match: forged, altered, or minted with another key.
    #[error("the credential's signature does not verify")]
    BadMac,
    /// The expiry has passed.
    #[error("the credential has expired")]
    Expired,
    /// The expiry lies further in the future than the server accepts.
    #[error("the credential's lifetime is longer than this server accepts")]
    TooLong,
}

/// An account id: 1–64 characters of `A-Z a-z 0-9 - _` (no dots, so the token splits cleanly).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

/// The user id is empty, too long, or uses characters outside `A-Z a-z 0-9 - _`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a user id is 1-64 characters of A-Z a-z 0-9 - _")]
pub struct InvalidUserId;

impl UserId {
    /// Parses a user id.
    pub fn parse(text: &str) -> Result<Self, InvalidUserId> {
        let ok = !text.is_empty()
            && text.len() <= MAX_USER_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidUserId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;

    fn key(b: u8) -> CredentialKey {
        CredentialKey::from_bytes([b; 32])
    }

    #[test]
    fn minted_credentials_verify() {
        let user = UserId::parse("alice_01").unwrap();
        let token = key(1).mint(&user, 1_000 + 3_600);
        let cred = key(1).verify(&token, 1_000, DAY).unwrap();
        assert_eq!(cred.user, user);
        assert_eq!(cred.expiry, 4_600);
    }

    #[test]
    fn refuses_forged_expired_and_overlong() {
        let user = UserId::parse("alice").unwrap();
        let token = key(1).mint(&user, 5_000);
        assert_eq!(
            key(2).verify(&token, 1_000, DAY),
            Err(CredentialError::BadMac)
        );
        assert_eq!(
            key(1).verify(&token, 5_000, DAY),
            Err(CredentialError::Expired)
        );
        assert_eq!(
            key(1).verify(&token, 1_000, 100),
            Err(CredentialError::TooLong)
        );
        let altered = token.replacen("alice", "mallory", 1);
        assert_eq!(
            key(1).verify(&altered, 1_000, DAY),
            Err(CredentialError::BadMac)
        );
        let later = token.replacen("5000", "9000", 1);
        assert_eq!(
            key(1).verify(&later, 1_000, DAY),
            Err(CredentialError::BadMac)
        );
    }

    #[test]
    fn refuses_malformed() {
        let k = key(1);
        let good = k.mint(&UserId::parse("bob").unwrap(), 5_000);
        let mac = good.rsplit('.').next().unwrap();
        for bad in [
            "".to_owned(),
            "bob".to_owned(),
            "bob.5000".to_owned(),
            format!("bob.05000.{mac}"),
            format!("bob.+5000.{mac}"),
            format!("b.o.b.5000.{mac}"),
            format!("bob.5000.{mac}="),
            format!("bob.5000.{mac}.x"),
            format!(".5000.{mac}"),
            format!("bob.99999999999999999999999.{mac}"),
            format!("{}.5000.{mac}", "a".repeat(65)),
            "bob.5000.AAAA".to_owned(),
        ] {
            assert_eq!(
                k.verify(&bad, 1_000, DAY),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn verify_never_panics(token in "\\PC{0,200}") {
            let _ = key(3).verify(&token, 1_000, DAY);
        }

        #[test]
        fn mint_verify_round_trips(user in "[A-Za-z0-9_-]{1,64}", ttl in 1u64..DAY) {
            let user = UserId::parse(&user).unwrap();
            let token = key(4).mint(&user, 10_000 + ttl);
            prop_assert_eq!(key(4).verify(&token, 10_000, DAY).unwrap().user, user);
        }
    }
}
