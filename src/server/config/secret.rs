//! Secret settings: tokens, the server secret and Redis URLs (which may carry a password).
//! Each is checked when the configuration loads, prints as `[REDACTED]` (so the whole
//! configuration can derive `Debug` and be logged) and is wiped from memory on drop.

use std::convert::Infallible;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::domain::ServerSecret;
use crate::domain::secret::parse_hex32;

/// Shortest admin or metrics token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The text of a secret setting, unchecked: what the command line and the environment hold
/// until the configuration loads. Parsing never fails, so a malformed secret is refused
/// by loading, whose messages never repeat a value (clap's would).
#[derive(Clone, Debug, Deserialize)]
pub struct SecretText(SecretString);

impl SecretText {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl FromStr for SecretText {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(SecretString::from(text)))
    }
}

impl Serialize for SecretText {
    /// Serialises the secret itself: figment layers the command line over the file through
    /// serde, in memory. Nothing else serialises a configuration.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

/// Why a secret setting is refused. The messages never contain the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A token shorter than [`MIN_TOKEN_CHARS`].
    #[error("must be at least 16 characters")]
    ShortToken,
    /// A key that is not 32 bytes in hex.
    #[error("expected 64 hex characters (32 bytes)")]
    NotHex32,
    /// A Redis URL redis cannot use.
    #[error("not a usable redis:// or rediss:// URL")]
    RedisUrl,
}

impl crate::log_safe::LogSafe for SecretError {}

/// A bearer token (admin or metrics) of at least [`MIN_TOKEN_CHARS`] characters, surrounding
/// white space removed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "SecretText", into = "SecretText")]
pub struct Token(SecretText);

impl Token {
    /// The token itself.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl TryFrom<SecretText> for Token {
    type Error = SecretError;

    fn try_from(text: SecretText) -> Result<Self, Self::Error> {
        let trimmed = text.expose().trim();
        if trimmed.len() < MIN_TOKEN_CHARS {
            return Err(SecretError::ShortToken);
        }
        Ok(Self(SecretText(SecretString::from(trimmed))))
    }
}

impl From<Token> for SecretText {
    fn from(token: Token) -> Self {
        token.0
    }
}

impl FromStr for Token {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Ok(text) = text.parse::<SecretText>();
        Self::try_from(text)
    }
}

/// The server secret given as 64 hex characters, decoded when the configuration loads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "SecretText", into = "SecretText")]
pub struct HexSecret {
    /// The text as given, for layering (see [`SecretText`]'s `Serialize`).
    text: SecretText,
    key: ServerSecret,
}

impl HexSecret {
    /// The decoded secret.
    pub fn key(&self) -> &ServerSecret {
        &self.key
    }
}

impl TryFrom<SecretText> for HexSecret {
    type Error = SecretError;

    fn try_from(text: SecretText) -> Result<Self, Self::Error> {
        let bytes =
            zeroize::Zeroizing::new(parse_hex32(text.expose()).ok_or(SecretError::NotHex32)?);
        Ok(Self {
            key: ServerSecret::from_bytes(*bytes),
            text,
        })
    }
}

impl From<HexSecret> for SecretText {
    fn from(secret: HexSecret) -> Self {
        secret.text
    }
}

impl FromStr for HexSecret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Ok(text) = text.parse::<SecretText>();
        Self::try_from(text)
    }
}

/// A Redis URL (`redis[s]://[user:password@]host:port/db`) that redis accepts; it may carry a
/// password, so it is a secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "SecretText", into = "SecretText")]
pub struct RedisUrl(SecretText);

impl RedisUrl {
    /// The URL itself, password included.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl TryFrom<SecretText> for RedisUrl {
    type Error = SecretError;

    fn try_from(text: SecretText) -> Result<Self, Self::Error> {
        redis::IntoConnectionInfo::into_connection_info(text.expose())
            .map_err(|_| SecretError::RedisUrl)?;
        Ok(Self(text))
    }
}

impl From<RedisUrl> for SecretText {
    fn from(url: RedisUrl) -> Self {
        url.0
    }
}

impl FromStr for RedisUrl {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Ok(text) = text.parse::<SecretText>();
        Self::try_from(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let token: Token = "super-secret-admin-token".parse().unwrap();
        let url: RedisUrl = "redis://:hunter2-password@127.0.0.1:6379/0"
            .parse()
            .unwrap();
        let hex: HexSecret = "ab".repeat(32).parse().unwrap();
        let shown = format!("{token:?} {url:?} {hex:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("abab"), "{shown}");
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_them() {
        let short = "short-token".parse::<Token>().unwrap_err();
        assert!(!short.to_string().contains("short-token"));
        assert!("zz".repeat(32).parse::<HexSecret>().is_err());
        assert!("http://example.com".parse::<RedisUrl>().is_err());
        let token: Token = "  padded-token-0123456789  ".parse().unwrap();
        assert_eq!(token.expose(), "padded-token-0123456789");
    }
}
