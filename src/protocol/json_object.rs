//! The JSON shape every request body of the protocol has: one object with an epoch field and a
//! list field, each exactly once, no other field.
//!
//! Hand-written rather than derived: a derived struct would also accept a JSON array
//! `[epoch, [...]]`, and the protocol defines requests as objects only. Errors carry only where
//! the parser stopped (serde's own messages would quote the input).

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::DecodeError;

/// The field names of one request shape.
pub(super) trait Fields {
    /// The epoch field (`epoch`, `key_epoch`).
    const EPOCH: &'static str;
    /// The list field (`fingerprints`, `blinded`).
    const LIST: &'static str;
    /// The shape, for messages.
    const SHAPE: &'static str;
}

/// `{"<EPOCH>": <u64>, "<LIST>": L}`.
pub(super) struct EpochAndList<L, F> {
    pub epoch: u64,
    pub list: L,
    fields: PhantomData<F>,
}

impl<'de, L: Deserialize<'de>, F: Fields> Deserialize<'de> for EpochAndList<L, F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<L, F>(PhantomData<(L, F)>);
        impl<'de, L: Deserialize<'de>, F: Fields> Visitor<'de> for V<L, F> {
            type Value = EpochAndList<L, F>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(F::SHAPE)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut epoch = None;
                let mut list = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let key = key.as_ref();
                    if key == F::EPOCH && epoch.is_none() {
                        epoch = Some(map.next_value::<u64>()?);
                    } else if key == F::LIST && list.is_none() {
                        list = Some(map.next_value::<L>()?);
                    } else if key == F::EPOCH || key == F::LIST {
                        return Err(de::Error::custom("duplicate field"));
                    } else {
                        return Err(de::Error::custom("unknown field"));
                    }
                }
                match (epoch, list) {
                    (Some(epoch), Some(list)) => Ok(EpochAndList {
                        epoch,
                        list,
                        fields: PhantomData,
                    }),
                    _ => Err(de::Error::custom("missing field")),
                }
            }
        }
        deserializer.deserialize_map(V(PhantomData))
    }
}

/// Parses `body` as the object, mapping failures to [`DecodeError::NotJson`] (not JSON, or
/// cut short) or [`DecodeError::WrongShape`] (JSON of another shape).
pub(super) fn from_slice<'de, L: Deserialize<'de>, F: Fields>(
    body: &'de [u8],
) -> Result<EpochAndList<L, F>, DecodeError> {
    serde_json::from_slice(body).map_err(|err| {
        let (line, column) = (err.line(), err.column());
        match err.classify() {
            serde_json::error::Category::Data => DecodeError::WrongShape { line, column },
            _ => DecodeError::NotJson { line, column },
        }
    })
}
