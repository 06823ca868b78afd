//! Strict E.164 numbers, held as a non-zero u64.
//!
//! The server never normalises what people type: it accepts exactly `+` followed by 1–15 digits
//! with no leading zero. Because the first digit is never 0, the digit string and the integer are
//! in one-to-one correspondence, so a u64 holds a number losslessly.

use std::fmt;
use std::num::NonZeroU64;

/// Largest E.164 number: fifteen nines.
const MAX: u64 = 999_999_999_999_999;
/// Longest text form: `+` and fifteen digits.
pub const MAX_ASCII_LEN: usize = 16;

/// A valid E.164 phone number. `Debug` is redacted so a number never lands in a log by accident.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(NonZeroU64);

/// Why a string is not a strict E.164 number. Never carries the input itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum E164Error {
    /// The text does not start with `+`.
    #[error("an E.164 number starts with '+'")]
    MissingPlus,
    /// Nothing follows the `+`.
    #[error("an E.164 number has at least one digit")]
    Empty,
    /// A character other than an ASCII digit follows the `+`.
    #[error("an E.164 number holds only digits after '+'")]
    NotDigit,
    /// More than fifteen digits.
    #[error("an E.164 number has at most 15 digits")]
    TooLong,
    /// The first digit is 0 (no country code starts with 0).
    #[error("an E.164 number does not start with 0")]
    LeadingZero,
}

impl E164 {
    /// Parses the strict text form `+` then 1–15 digits, the first not 0.
    pub fn parse(text: &str) -> Result<Self, E164Error> {
        let digits = text.strip_prefix('+').ok_or(E164Error::MissingPlus)?;
        if digits.is_empty() {
            return Err(E164Error::Empty);
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E164Error::NotDigit);
        }
        if digits.len() > 15 {
            return Err(E164Error::TooLong);
        }
        if digits.starts_with('0') {
            return Err(E164Error::LeadingZero);
        }
        let value = digits
            .bytes()
            .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
        Self::from_u64(value)
    }

    /// Accepts the integer form (the digits without `+`), as stored on disk.
    pub fn from_u64(value: u64) -> Result<Self, E164Error> {
        if value > MAX {
            return Err(E164Error::TooLong);
        }
        NonZeroU64::new(value)
            .map(Self)
            .ok_or(E164Error::LeadingZero)
    }

    /// The digits as an integer.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// Writes `+digits` into `buf` and returns the filled part; no allocation.
    pub fn write_ascii(self, buf: &mut [u8; MAX_ASCII_LEN]) -> &[u8] {
        let mut digits = itoa::Buffer::new();
        let text = digits.format(self.get()).as_bytes();
        buf[0] = b'+';
        buf[1..=text.len()].copy_from_slice(text);
        &buf[..=text.len()]
    }
}

impl fmt::Display for E164 {
    /// The full number. Used for export and tools, never for logs (see `Debug`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.get())
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("E164(<redacted>)")
    }
}

impl std::str::FromStr for E164 {
    type Err = E164Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_strict_numbers() {
        assert_eq!(E164::parse("+1").unwrap().get(), 1);
        assert_eq!(
            E164::parse("+4915112345678").unwrap().get(),
            4_915_112_345_678
        );
        assert_eq!(E164::parse("+999999999999999").unwrap().get(), MAX);
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(E164::parse("4915112345678"), Err(E164Error::MissingPlus));
        assert_eq!(E164::parse("+"), Err(E164Error::Empty));
        assert_eq!(E164::parse("+49 151"), Err(E164Error::NotDigit));
        assert_eq!(E164::parse("+49-151"), Err(E164Error::NotDigit));
        assert_eq!(E164::parse("++49"), Err(E164Error::NotDigit));
        assert_eq!(E164::parse("+٤٩"), Err(E164Error::NotDigit));
        assert_eq!(E164::parse("+1234567890123456"), Err(E164Error::TooLong));
        assert_eq!(E164::parse("+0491"), Err(E164Error::LeadingZero));
        assert_eq!(E164::parse(""), Err(E164Error::MissingPlus));
        assert_eq!(E164::from_u64(0), Err(E164Error::LeadingZero));
        assert_eq!(E164::from_u64(MAX + 1), Err(E164Error::TooLong));
    }

    #[test]
    fn debug_is_redacted() {
        let n = E164::parse("+4915112345678").unwrap();
        assert!(!format!("{n:?}").contains("4915112345678"));
        assert_eq!(n.to_string(), "+4915112345678");
    }

    proptest! {
        #[test]
        fn text_round_trips(value in 1u64..=MAX) {
            let n = E164::from_u64(value).unwrap();
            let mut buf = [0u8; MAX_ASCII_LEN];
            let ascii = std::str::from_utf8(n.write_ascii(&mut buf)).unwrap().to_owned();
            prop_assert_eq!(&ascii, &n.to_string());
            prop_assert_eq!(E164::parse(&ascii).unwrap(), n);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,20}") {
            let _ = E164::parse(&text);
        }
    }
}
