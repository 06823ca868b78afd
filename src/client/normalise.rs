//! What people type → strict E.164, with libphonenumber's metadata (the `phonenumber` crate).
//!
//! Address books hold numbers as people typed them: national forms (`0151 1234 5678`), with
//! brackets, dots and dashes, with `+` or an international dialling prefix (`00`, `011`), as
//! `tel:` URIs, with extensions. The server only accepts strict E.164, so every number is
//! normalised here, once, before it is fingerprinted. Entries that cannot be normalised are
//! reported back to the caller, never silently dropped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use phonenumber::country::Id;
use phonenumber::metadata::{DATABASE, Descriptor, Metadata};

use crate::client::addressbook::Contact;
use crate::domain::E164;

/// Why an entry could not be normalised. Never carries the entry itself: these end up in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NormaliseError {
    /// The entry is empty or only whitespace.
    #[error("the entry is empty")]
    Empty,
    /// A national form (no `+`, no international prefix) and no default region to read it in.
    #[error("a national number needs a default region (or write it with '+' or '00')")]
    NeedsRegion,
    /// The entry does not look like a phone number at all.
    #[error("the entry does not look like a phone number")]
    Unparseable,
    /// The country calling code is not assigned to any country or service.
    #[error("the country calling code is not assigned")]
    UnknownCountryCode,
    /// The digits cannot form a number of that country (wrong length or impossible prefix).
    #[error("the number has an impossible length or prefix for its country")]
    Invalid,
    /// The default region is not a region libphonenumber knows.
    #[error("unknown region; use a two-letter code such as DE or US")]
    UnknownRegion,
}

/// Turns what people type into E.164, reading national forms in an optional default region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normaliser {
    default_region: Option<Id>,
}

/// The region the environment's locale names, the way phones take their default region from
/// theirs: the first of `LC_ALL`, `LC_TELEPHONE`, `LANG` that is set and not empty (POSIX's
/// precedence), read as `language_TERRITORY[.codeset][@modifier]` (`de_DE.UTF-8` → `DE`). `None`
/// when that locale names no territory (`C`, `POSIX`, `C.UTF-8`, `en`), without looking further.
/// Returns the code and the variable it came from; `var` reads a variable (`std::env::var`).
pub fn region_from_locale(var: impl Fn(&str) -> Option<String>) -> Option<(String, &'static str)> {
    let (name, value) = ["LC_ALL", "LC_TELEPHONE", "LANG"]
        .into_iter()
        .find_map(|name| var(name).filter(|v| !v.is_empty()).map(|v| (name, v)))?;
    let territory = value.split(['.', '@']).next()?.split_once('_')?.1;
    (territory.len() == 2 && territory.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| (territory.to_ascii_uppercase(), name))
}

impl Normaliser {
    /// A normaliser for national forms in `default_region` (ISO 3166 code, any case), or for
    /// international forms only when `None`.
    pub fn new(default_region: Option<&str>) -> Result<Self, NormaliseError> {
        let default_region = match default_region {
            None => {
                // Touch the metadata now: its first use decodes the whole database (tens of
                // milliseconds), which belongs in setup, not in the first number.
                let _ = DATABASE.by_code(&1);
                None
            }
            Some(code) => {
                let code = code.trim().to_ascii_uppercase();
                let id: Id = code.parse().map_err(|_| NormaliseError::UnknownRegion)?;
                // Some identifiers exist in the enum without metadata; those cannot read
                // national numbers, so reject them here rather than on every number.
                DATABASE
                    .by_id(id.as_ref())
                    .ok_or(NormaliseError::UnknownRegion)?;
                Some(id)
            }
        };
        Ok(Self { default_region })
    }

    /// The default region's code (e.g. `"DE"`), if there is one.
    pub fn default_region(&self) -> Option<&str> {
        self.default_region.as_ref().map(|id| id.as_ref())
    }

    /// Normalises one entry as written in an address book to E.164.
    pub fn normalise(&self, raw: &str) -> Result<E164, NormaliseError> {
        let text = raw.trim();
        if text.is_empty() {
            return Err(NormaliseError::Empty);
        }
        let text = without_uri_parameters(text);
        let region_meta = self
            .default_region
            .and_then(|id| DATABASE.by_id(id.as_ref()));

        let international = international_form(text, region_meta);
        let parsed = match &international {
            // International forms are parsed without the default region on purpose:
            // `phonenumber` strips the *default region's* national prefix from a foreign
            // number (with region US, "+49 151 1234 5678" loses the "1" of "151"), so the
            // region must not take part once the country code is written out.
            Some(candidate) => phonenumber::parse(None, candidate.as_ref()),
            None => match self.default_region {
                Some(id) => phonenumber::parse(Some(id), text),
                None if count_digits(text) >= MIN_DIGITS => {
                    return Err(NormaliseError::NeedsRegion);
                }
                None => return Err(NormaliseError::Unparseable),
            },
        }
        .map_err(from_parse_error)?;

        // The extension (`ext. 12`, `;ext=12`) is dropped: it routes a call inside a switchboard
        // and is no part of the subscriber's E.164 number.
        let code = parsed.code().value();
        let read = parsed.national().to_string();
        let main = DATABASE
            .by_code(&code)
            .and_then(|metas| metas.into_iter().next())
            .ok_or(NormaliseError::UnknownCountryCode)?;
        // Possible in the code's main region, or in the region of a shared code it belongs to.
        let possible = |national: &str| {
            is_possible(main, national)
                || region_of(code, national).is_some_and(|meta| is_possible(meta, national))
        };
        let national = if possible(&read) {
            read
        } else {
            // `phonenumber` takes prefixes off that libphonenumber keeps ("+7 800 123-45-67"
            // loses the 8 of its toll-free range, "+370 800 12 345" two digits), and for a
            // calling code shared by several regions keeps a bracketed trunk prefix
            // ("+44 (0)7700 900123") that libphonenumber takes off. Read the digits as written
            // again, the way libphonenumber does, in the metadata it uses for them: the default
            // region's for a national form, the calling code's main region's otherwise.
            let (strip_meta, written_code) = match &international {
                Some(candidate) => (main, Some(candidate.as_ref())),
                None => (region_meta.unwrap_or(main), None),
            };
            national_as_written(
                written_code.unwrap_or(text),
                written_code.map(|_| code),
                parsed.extension().map(|e| e.as_ref()),
                &read,
            )
            .map(|digits| strip_national_prefix(strip_meta, &digits).to_owned())
            .filter(|national| possible(national))
            .ok_or(NormaliseError::Invalid)?
        };
        E164::parse(&format!("+{code}{national}")).map_err(|_| NormaliseError::Invalid)
    }
}

/// `text` without the RFC 3966 parameters that are no part of the number (`;ext=…`, `;isub=…`).
///
/// `phonenumber` reads them only in strict URIs (no spaces); in anything else, such as
/// "+1 212 555 0100;ext=12", it fails. A `phone-context` parameter is left alone: it completes
/// the number, and only the strict URI reader understands it.
fn without_uri_parameters(text: &str) -> &str {
    let lower = text.to_ascii_lowercase();
    if lower.contains(";phone-context=") {
        return text;
    }
    // Lower-casing ASCII keeps byte offsets, so positions in `lower` are positions in `text`.
    [";ext=", ";isub="]
        .iter()
        .filter_map(|parameter| lower.find(parameter))
        .min()
        .map_or(text, |at| text[..at].trim_end())
}

/// Fewer digits than this is noise, not a national number waiting for a region.
const MIN_DIGITS: usize = 3;

/// Whether `national` (the national significant number, leading zeros kept) could be a complete
/// number of the country described by `meta`.
///
/// This is libphonenumber's "possible" test (the length is one that numbers of some type have
/// there) plus a check that the country's general digit pattern matches from the first digit
/// (so a UK number cannot start with 6), not its stricter "valid" test (the number lies in a
/// range allocated today). Reasons: a number the metadata does not know yet — new
/// ranges appear every month, and clients update rarely — would otherwise hide a real contact
/// for good, while a possible-but-unallocated number only costs one fingerprint that never
/// matches; and the ranges set aside for drama and documentation (UK 07700 900xxx, France
/// 06 39 98 xx xx), which the examples and demos use, are "invalid" by design. Local-only
/// lengths (a US number without its area code) are rejected: they are not complete numbers.
fn is_possible(meta: &Metadata, national: &str) -> bool {
    let descriptors = meta.descriptors();
    // `phonenumber` leaves the general descriptor's lengths empty, so take the union of the
    // lengths of the number types (the general lengths are defined as exactly that union).
    let length_ok = u16::try_from(national.len()).is_ok_and(|len| {
        number_types(meta)
            .iter()
            .flatten()
            .any(|descriptor| descriptor.possible_length().contains(&len))
    });
    length_ok && descriptors.general().is_match(national)
}

/// The descriptors of the number types (fixed line, mobile, toll-free, …) in `meta`.
fn number_types(meta: &Metadata) -> [Option<&Descriptor>; 10] {
    let descriptors = meta.descriptors();
    [
        descriptors.fixed_line(),
        descriptors.mobile(),
        descriptors.toll_free(),
        descriptors.premium_rate(),
        descriptors.shared_cost(),
        descriptors.personal_number(),
        descriptors.voip(),
        descriptors.pager(),
        descriptors.uan(),
        descriptors.voicemail(),
    ]
}

/// The metadata of the region a number of calling code `code` belongs to, as libphonenumber
/// finds it: for a calling code shared by several regions (+1, +7, +44, …), the first whose
/// leading digits or number types fit `national`; `None` if none does (the caller then takes
/// the code's main region). So a Canadian `+1 310-1234` is judged by Canada's lengths, which
/// the United States' (the main region of +1) do not have.
fn region_of(code: u16, national: &str) -> Option<&'static Metadata> {
    let metas = DATABASE.by_code(&code)?;
    if metas.len() == 1 {
        return metas.into_iter().next();
    }
    metas.into_iter().find(|meta| match meta.leading_digits() {
        Some(leading) => leading.find(national).is_some_and(|m| m.start() == 0),
        None => number_types(meta)
            .iter()
            .flatten()
            .any(|descriptor| descriptor.is_match(national)),
    })
}

/// The national number's digits as written in `text` (what `phonenumber` was given), before
/// any prefix is taken off: its decimal digits, less the country code `code` in front (for an
/// international form) and the extension at the end. `None` unless those digits end in `read`,
/// the national number `phonenumber` made of them: when letters stand for digits ("1-800-FLOWERS")
/// or a `phone-context` names the country, the text's digits are not the number's, and nothing
/// is guessed.
fn national_as_written(
    text: &str,
    code: Option<u16>,
    extension: Option<&str>,
    read: &str,
) -> Option<String> {
    let digits: String = text.chars().filter_map(decimal_digit).collect();
    let extension: String = extension
        .unwrap_or_default()
        .chars()
        .filter_map(decimal_digit)
        .collect();
    let digits = digits.strip_suffix(extension.as_str())?;
    let digits = match code {
        Some(code) => digits.strip_prefix(code.to_string().as_str())?,
        None => digits,
    };
    digits.ends_with(read).then(|| digits.to_owned())
}

/// `digits` without the national (trunk) prefix, taken off as libphonenumber's
/// `maybeStripNationalPrefixAndCarrierCode` and `parse` do: only where the region's pattern for
/// it matches at the start, not if that turns a number of the region's general pattern into one
/// that is not (Russia's toll-free 800… does not lose its 8), and only if what is left has a
/// possible length. A region that rewrites the rest (`national_prefix_transform_rule`:
/// Argentina, Mexico, …) is left as written.
fn strip_national_prefix<'d>(meta: &Metadata, digits: &'d str) -> &'d str {
    if meta.national_prefix_transform_rule().is_some() {
        return digits;
    }
    // Without a pattern of its own, the national prefix itself is the pattern (as
    // libphonenumber's metadata builder fills it in; `phonenumber` leaves it empty).
    let rest = match meta.national_prefix_for_parsing() {
        Some(prefix) => prefix
            .find(digits)
            .filter(|found| found.start() == 0)
            .map(|found| &digits[found.end()..]),
        None => meta
            .national_prefix()
            .and_then(|prefix| digits.strip_prefix(prefix)),
    };
    let Some(rest) = rest else {
        return digits;
    };
    let general = meta.descriptors().general();
    if general.is_match(digits) && !general.is_match(rest) || !is_possible(meta, rest) {
        return digits;
    }
    rest
}

/// If `text` is written in international form (`+`, `00` or the region's international prefix,
/// or a `tel:` URI with a global context), the text to parse without a region. `None` for
/// national forms.
fn international_form<'t>(text: &'t str, region: Option<&Metadata>) -> Option<Cow<'t, str>> {
    // An RFC 3966 URI with a global context (`tel:0151…;phone-context=+49`) names its country.
    if text.to_ascii_lowercase().contains("phone-context=+") {
        return Some(Cow::Borrowed(text));
    }
    let start = text.find(|c: char| c == '+' || c == '\u{FF0B}' || decimal_digit(c).is_some())?;
    let rest = &text[start..];
    if let Some(after_plus) = rest.strip_prefix(['+', '\u{FF0B}']) {
        return Some(Cow::Owned(plus_form(after_plus)));
    }

    // The leading digits, ignoring separators, up to the first letter (an extension or junk).
    let digits: String = rest
        .chars()
        .take_while(|c| !c.is_alphabetic())
        .filter_map(decimal_digit)
        .collect();
    let region_idd = region
        .and_then(|meta| meta.international_prefix())
        .and_then(|idd| idd.find(&digits))
        .filter(|found| found.start() == 0 && found.end() > 0)
        .map(|found| found.end());
    // `00` is the international prefix nearly everywhere, and no national number starts with
    // it, so it is accepted whatever the default region dials abroad with (and without one).
    let idd_len = region_idd.or_else(|| digits.starts_with("00").then_some(2))?;
    // As in libphonenumber: a country code never starts with 0, so "00 0…" is not international.
    if digits[idd_len..].starts_with('0') {
        return None;
    }

    // Skip the prefix's digits in the original text, keeping the rest (and any extension).
    let mut seen = 0;
    let after = rest
        .char_indices()
        .find_map(|(at, c)| {
            if seen == idd_len {
                return Some(at);
            }
            if decimal_digit(c).is_some() {
                seen += 1;
            }
            None
        })
        .unwrap_or(rest.len());
    Some(Cow::Owned(plus_form(&rest[after..])))
}

/// `+` and the number after the country code's `+` or international prefix, as `phonenumber`
/// reads it correctly.
fn plus_form(after_plus: &str) -> String {
    // The space matters: without one, `phonenumber` takes the text for an RFC 3966 number and
    // everything up to the first dash for the country code ("+49151-1234-5678" → code 49151).
    // Written out naturally it finds the code itself, and still drops `;ext=` or `ext.` parts.
    format!("+ {after_plus}")
}

/// The value of a decimal digit in the scripts address books commonly use, else `None`.
fn decimal_digit(c: char) -> Option<char> {
    // Zero of each block of ten: ASCII, Arabic-Indic, Extended Arabic-Indic, Devanagari, Bengali,
    // fullwidth. libphonenumber reads these too; recognising them here keeps "٠٠٤٩…" international.
    const ZEROS: [u32; 6] = [0x30, 0x660, 0x6F0, 0x966, 0x9E6, 0xFF10];
    let code = u32::from(c);
    ZEROS
        .iter()
        .find(|&&zero| (zero..zero + 10).contains(&code))
        .and_then(|&zero| char::from_digit(code - zero, 10))
}

/// How many decimal digits `text` holds.
fn count_digits(text: &str) -> usize {
    text.chars().filter(|&c| decimal_digit(c).is_some()).count()
}

/// Maps the parser's error to ours; the parser's text is never passed on.
fn from_parse_error(error: phonenumber::ParseError) -> NormaliseError {
    use phonenumber::ParseError;
    match error {
        ParseError::NoNumber | ParseError::MalformedInteger(_) => NormaliseError::Unparseable,
        ParseError::InvalidCountryCode => NormaliseError::UnknownCountryCode,
        ParseError::TooShortAfterIdd | ParseError::TooShortNsn | ParseError::TooLong => {
            NormaliseError::Invalid
        }
    }
}

/// An address book entry that could not be normalised: which contact, what it said, and why.
#[derive(Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Index of the contact in the slice given to [`normalise_book`].
    pub contact: usize,
    /// The entry as written in the address book.
    pub raw: String,
    /// Why it was rejected.
    pub error: NormaliseError,
}

impl fmt::Debug for Rejected {
    /// Redacts the entry, as `E164`'s `Debug` does, so it never lands in a log by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("contact", &self.contact)
            .field("raw", &"<redacted>")
            .field("error", &self.error)
            .finish()
    }
}

/// An address book's numbers in E.164: each number once, with the contacts that carry it, and
/// the entries that could not be normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NormalisedBook {
    numbers: Vec<E164>,
    owners: Vec<Vec<usize>>,
    rejected: Vec<Rejected>,
}

impl NormalisedBook {
    /// The unique numbers, in the order they first occur in the address book.
    pub fn numbers(&self) -> &[E164] {
        &self.numbers
    }

    /// Indices (ascending, each once) of the contacts that carry `numbers()[i]`; empty if `i`
    /// is out of range.
    pub fn owners(&self, i: usize) -> &[usize] {
        self.owners.get(i).map_or(&[], Vec::as_slice)
    }

    /// The entries that could not be normalised, in address book order.
    pub fn unparseable(&self) -> &[Rejected] {
        &self.rejected
    }
}

/// Normalises every number of every contact, collapsing duplicates and reporting failures.
pub fn normalise_book(contacts: &[Contact], normaliser: &Normaliser) -> NormalisedBook {
    let mut book = NormalisedBook::default();
    let mut position: HashMap<E164, usize> = HashMap::new();
    for (contact, entry) in contacts.iter().enumerate() {
        for raw in &entry.numbers {
            match normaliser.normalise(raw) {
                Ok(number) => {
                    let at = *position.entry(number).or_insert_with(|| {
                        book.numbers.push(number);
                        book.owners.push(Vec::new());
                        book.numbers.len() - 1
                    });
                    let owners = &mut book.owners[at];
                    // Contacts are visited in order, so a repeat by the same contact (the
                    // number written twice, or in two forms) is always the last owner.
                    if owners.last() != Some(&contact) {
                        owners.push(contact);
                    }
                }
                Err(error) => book.rejected.push(Rejected {
                    contact,
                    raw: raw.clone(),
                    error,
                }),
            }
        }
    }
    book
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locale_names_the_default_region_in_posix_order() {
        fn region(pairs: &[(&str, &str)]) -> Option<(String, &'static str)> {
            region_from_locale(|name| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            })
        }
        assert_eq!(
            region(&[("LANG", "de_DE.UTF-8")]),
            Some(("DE".into(), "LANG"))
        );
        assert_eq!(region(&[("LANG", "pt_br")]), Some(("BR".into(), "LANG")));
        assert_eq!(
            region(&[("LANG", "sr_RS@latin")]),
            Some(("RS".into(), "LANG"))
        );
        assert_eq!(
            region(&[("LANG", "de_DE.UTF-8"), ("LC_TELEPHONE", "fr_FR.UTF-8")]),
            Some(("FR".into(), "LC_TELEPHONE"))
        );
        assert_eq!(
            region(&[
                ("LC_ALL", "en_GB"),
                ("LC_TELEPHONE", "fr_FR"),
                ("LANG", "de_DE")
            ]),
            Some(("GB".into(), "LC_ALL"))
        );
        // An empty variable counts as unset; a locale without a territory ends the search.
        assert_eq!(
            region(&[("LC_ALL", ""), ("LANG", "it_IT.UTF-8")]),
            Some(("IT".into(), "LANG"))
        );
        assert_eq!(region(&[("LC_ALL", "C"), ("LANG", "de_DE.UTF-8")]), None);
        for locale in ["C", "POSIX", "C.UTF-8", "en", "de_DEU", "de_1A", "_"] {
            assert_eq!(
                region(&[("LANG", locale)]).as_ref().map(|r| r.1),
                None,
                "{locale}"
            );
        }
        assert_eq!(region(&[]), None);
    }
    use proptest::prelude::*;

    fn with(region: Option<&str>) -> Normaliser {
        Normaliser::new(region).unwrap()
    }

    fn norm(region: Option<&str>, raw: &str) -> Result<String, NormaliseError> {
        with(region).normalise(raw).map(|n| n.to_string())
    }

    fn contact(name: &str, numbers: &[&str]) -> Contact {
        Contact {
            name: name.to_owned(),
            numbers: numbers.iter().map(|&n| n.to_owned()).collect(),
            unknown_charsets: Vec::new(),
        }
    }

    /// One number per country: region, E.164, national forms, and the national significant
    /// number split into its usual groups (for the international forms).
    #[derive(Debug)]
    struct Case {
        region: &'static str,
        e164: &'static str,
        national: &'static [&'static str],
        code: &'static str,
        groups: &'static [&'static str],
        /// The trunk prefix people put in brackets after the country code, if any.
        trunk: Option<&'static str>,
    }

    const CASES: &[Case] = &[
        Case {
            region: "DE",
            e164: "+4915112345678",
            national: &[
                "0151 1234 5678",
                "0151/12345678",
                "(0151) 1234-5678",
                "0151.1234.5678",
                "015112345678",
            ],
            code: "49",
            groups: &["151", "1234", "5678"],
            trunk: Some("0"),
        },
        Case {
            region: "US",
            e164: "+12125550100",
            national: &[
                "(212) 555-0100",
                "212-555-0100",
                "212.555.0100",
                "1 (212) 555-0100",
                "2125550100",
            ],
            code: "1",
            groups: &["212", "555", "0100"],
            trunk: None,
        },
        Case {
            region: "GB",
            e164: "+447700900123",
            national: &[
                "07700 900123",
                "07700-900-123",
                "(07700) 900 123",
                "07700.900.123",
                "07700900123",
            ],
            code: "44",
            groups: &["7700", "900", "123"],
            trunk: Some("0"),
        },
        Case {
            region: "FR",
            e164: "+33639981234",
            national: &[
                "06 39 98 12 34",
                "06-39-98-12-34",
                "06.39.98.12.34",
                "(06) 39 98 12 34",
                "0639981234",
            ],
            code: "33",
            groups: &["6", "39", "98", "12", "34"],
            trunk: Some("0"),
        },
        Case {
            region: "IN",
            e164: "+918123456789",
            national: &[
                "081234 56789",
                "81234 56789",
                "81234-56789",
                "(0) 81234 56789",
                "8123456789",
            ],
            code: "91",
            groups: &["81234", "56789"],
            trunk: Some("0"),
        },
    ];

    /// The international ways of writing a case: with `+`, `00`, brackets, dots, a `tel:` URI.
    fn international_forms(case: &Case) -> Vec<String> {
        let spaced = case.groups.join(" ");
        let joined = case.groups.concat();
        let mut forms = vec![
            format!("+{} {spaced}", case.code),
            format!("+{}{joined}", case.code),
            format!("00{} {spaced}", case.code),
            format!("00 {} {}", case.code, case.groups.join("-")),
            format!("+{}-{}", case.code, case.groups.join("-")),
            format!("(+{}) {spaced}", case.code),
            format!("+{}.{}", case.code, case.groups.join(".")),
            format!("tel:+{}-{}", case.code, case.groups.join("-")),
        ];
        if let Some(trunk) = case.trunk {
            forms.push(format!("+{} ({trunk}){spaced}", case.code));
        }
        forms
    }

    #[test]
    fn the_same_number_written_ten_ways_gives_one_e164() {
        for case in CASES {
            let mut forms: Vec<String> = case.national.iter().map(|&s| s.to_owned()).collect();
            forms.extend(international_forms(case));
            assert!(forms.len() >= 10);
            for form in &forms {
                assert_eq!(
                    norm(Some(case.region), form).as_deref(),
                    Ok(case.e164),
                    "{form} in {}",
                    case.region
                );
            }
            // International forms need no region, and a different region must not change them.
            for form in international_forms(case) {
                for region in [None, Some("US"), Some("DE"), Some("AU")] {
                    assert_eq!(
                        norm(region, &form).as_deref(),
                        Ok(case.e164),
                        "{form} in {region:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn national_forms_use_the_default_region() {
        assert_eq!(
            norm(Some("DE"), "0151 1234 5678").as_deref(),
            Ok("+4915112345678")
        );
        assert_eq!(
            norm(Some("de"), " 0151 1234 5678 ").as_deref(),
            Ok("+4915112345678")
        );
        assert_eq!(
            norm(Some("DE"), "030 1234567").as_deref(),
            Ok("+49301234567")
        );
        // The "(0)" Europeans write after the country code is the national prefix, dropped.
        assert_eq!(
            norm(None, "+49 (0)30 1234567").as_deref(),
            Ok("+49301234567")
        );
        assert_eq!(
            norm(None, "+44 (0)7700 900123").as_deref(),
            Ok("+447700900123")
        );
        assert_eq!(
            norm(Some("FR"), "+33 (0)6 39 98 12 34").as_deref(),
            Ok("+33639981234")
        );
        // Italian numbers keep their leading 0.
        assert_eq!(
            norm(None, "+39 06 1234 5678").as_deref(),
            Ok("+390612345678")
        );
    }

    #[test]
    fn the_default_regions_own_international_prefix_works() {
        assert_eq!(
            norm(Some("US"), "011 49 151 1234 5678").as_deref(),
            Ok("+4915112345678")
        );
        assert_eq!(
            norm(Some("AU"), "0011 49 151 1234 5678").as_deref(),
            Ok("+4915112345678")
        );
        assert_eq!(
            norm(Some("US"), "0049 151 1234 5678").as_deref(),
            Ok("+4915112345678")
        );
        // 011 is only an international prefix where it is dialled, so in Germany it is national
        // (and too short to be a number).
        assert_ne!(
            norm(Some("DE"), "011 49 151 1234 5678").as_deref(),
            Ok("+4915112345678")
        );
    }

    #[test]
    fn a_foreign_number_is_not_read_with_the_default_regions_rules() {
        // `phonenumber` alone, given region US, turns this into +495112345678.
        assert_eq!(
            norm(Some("US"), "+49 151 12345678").as_deref(),
            Ok("+4915112345678")
        );
        assert_eq!(
            norm(Some("US"), "011 49 151 12345678").as_deref(),
            Ok("+4915112345678")
        );
    }

    #[test]
    fn tel_uris() {
        assert_eq!(
            norm(None, "tel:+49-151-1234-5678").as_deref(),
            Ok("+4915112345678")
        );
        assert_eq!(
            norm(None, "TEL:+1-212-555-0100;ext=12").as_deref(),
            Ok("+12125550100")
        );
        assert_eq!(
            norm(None, "tel:0151-1234-5678;phone-context=+49").as_deref(),
            Ok("+4915112345678")
        );
        assert_eq!(
            norm(Some("DE"), "tel:0151-1234-5678").as_deref(),
            Ok("+4915112345678")
        );
    }

    #[test]
    fn extensions_are_dropped() {
        for raw in [
            "+1 212 555 0100 ext. 12",
            "+1 212 555 0100 x12",
            "+1 (212) 555-0100 extension 12",
            "+1 212 555 0100;ext=12",
        ] {
            assert_eq!(norm(None, raw).as_deref(), Ok("+12125550100"), "{raw}");
        }
        assert_eq!(
            norm(Some("US"), "212-555-0100 x 7").as_deref(),
            Ok("+12125550100")
        );
    }

    #[test]
    fn vanity_letters_are_keypad_digits() {
        assert_eq!(
            norm(Some("US"), "1-800-FLOWERS").as_deref(),
            Ok("+18003569377")
        );
    }

    #[test]
    fn national_forms_need_a_region() {
        assert_eq!(
            norm(None, "0151 1234 5678"),
            Err(NormaliseError::NeedsRegion)
        );
        assert_eq!(
            norm(None, "(212) 555-0100"),
            Err(NormaliseError::NeedsRegion)
        );
        // 011 is the US international prefix, meaningless without a region.
        assert_eq!(
            norm(None, "011 49 151 1234 5678"),
            Err(NormaliseError::NeedsRegion)
        );
        assert_eq!(
            norm(None, "call reception"),
            Err(NormaliseError::Unparseable)
        );
    }

    #[test]
    fn impossible_numbers_are_rejected() {
        // Too short for anything in Germany or the US.
        assert_eq!(norm(Some("DE"), "0151"), Err(NormaliseError::Invalid));
        assert_eq!(norm(None, "+49 151"), Err(NormaliseError::Invalid));
        assert_eq!(
            norm(Some("US"), "212 555 010"),
            Err(NormaliseError::Invalid)
        );
        assert_eq!(norm(None, "+33 6 39 98 12 3"), Err(NormaliseError::Invalid));
        // A US number without its area code is only locally diallable: not a full number.
        assert_eq!(norm(Some("US"), "555-0100"), Err(NormaliseError::Invalid));
        // Too long everywhere.
        assert_eq!(
            norm(None, "+49 151 1234 5678 9012 3456"),
            Err(NormaliseError::Invalid)
        );
        // Right length, but no UK number starts with 0 after the prefix is removed... a UK
        // national number cannot start with 6.
        assert_eq!(norm(None, "+44 6123 456789"), Err(NormaliseError::Invalid));
        assert_eq!(
            norm(None, "+999 1234 5678"),
            Err(NormaliseError::UnknownCountryCode)
        );
    }

    #[test]
    fn prefixes_libphonenumber_keeps_are_kept() {
        // Issue 15, found by the oracle (tests/phone_oracle.rs): ranges whose first digit is the
        // trunk prefix's lost it, and with it the number (`phonenumber` alone strips it).
        for (region, raw, e164) in [
            (None, "+7 800 123-45-67", "+78001234567"),
            (Some("RU"), "8 (800) 123-45-67", "+78001234567"),
            (Some("KZ"), "8 (808) 123-45-67", "+78081234567"),
            (Some("BY"), "8 801 123 4567", "+3758011234567"),
            (None, "00 375 801 123 4567", "+3758011234567"),
            (None, "+370 800 12 345", "+37080012345"),
            (Some("LT"), "+370 808 12 345", "+37080812345"),
            // A Rwandan number that starts with Rwanda's calling code.
            (Some("RW"), "250 123 456", "+250250123456"),
            // Canada's 7-digit 310 numbers: judged by Canada's lengths, not by the US's.
            (None, "+1 310-1234", "+13101234"),
            (Some("CA"), "310-1234", "+13101234"),
            (None, "+800 1234 5678", "+80012345678"),
            // Gabon's old 8-digit mobile numbers keep their 0, as in libphonenumber; the 7-digit
            // form is another number there.
            (Some("GA"), "06 03 14 39", "+24106031439"),
            (None, "+241 6 03 14 39", "+2416031439"),
            // The trunk prefix still goes where it is one.
            (Some("RU"), "8 (495) 123-45-67", "+74951234567"),
            (Some("BY"), "8 017 123-45-67", "+375171234567"),
            (Some("LT"), "8 612 34567", "+37061234567"),
        ] {
            assert_eq!(
                norm(region, raw).as_deref(),
                Ok(e164),
                "{raw} in {region:?}"
            );
        }
        // A 14-digit Russian number that starts with 8 is possible as it stands, and its 8 is
        // no trunk prefix: without it 13 digits are left, a length no Russian number has.
        assert_eq!(
            norm(None, "+7 8812 345 678 9012").as_deref(),
            Ok("+788123456789012")
        );
        // Still refused: a US number without its area code, even though Canada has 7-digit
        // numbers (in 310 only).
        assert_eq!(norm(None, "+1 555-0100"), Err(NormaliseError::Invalid));
        assert_eq!(norm(Some("US"), "555-0100"), Err(NormaliseError::Invalid));
    }

    #[test]
    fn a_shared_calling_codes_region_is_found_as_libphonenumber_finds_it() {
        let region = |code, national| region_of(code, national).map(Metadata::id);
        // By leading digits, matched from the first digit: Svalbard's 79, though Norway's
        // 7[0-8] or [02-689] occur further on.
        assert_eq!(region(47, "79123456"), Some("SJ"));
        assert_eq!(region(47, "22123456"), Some("NO"));
        // By number types where a region has no leading digits: Canada's 310 numbers.
        assert_eq!(region(1, "3101234"), Some("CA"));
        assert_eq!(region(1, "5550100"), None);
        // A calling code of one region is that region's.
        assert_eq!(region(49, "1"), Some("DE"));
        assert_eq!(region(999, "1"), None);
    }

    #[test]
    fn junk_is_unparseable_or_empty() {
        assert_eq!(norm(Some("DE"), ""), Err(NormaliseError::Empty));
        assert_eq!(norm(Some("DE"), "  \t "), Err(NormaliseError::Empty));
        assert_eq!(
            norm(Some("DE"), "call reception"),
            Err(NormaliseError::Unparseable)
        );
        assert_eq!(norm(Some("DE"), "+"), Err(NormaliseError::Unparseable));
        assert_eq!(norm(Some("DE"), "--"), Err(NormaliseError::Unparseable));
    }

    #[test]
    fn unknown_regions_are_rejected() {
        assert_eq!(
            Normaliser::new(Some("XX")),
            Err(NormaliseError::UnknownRegion)
        );
        assert_eq!(
            Normaliser::new(Some("")),
            Err(NormaliseError::UnknownRegion)
        );
        assert_eq!(
            Normaliser::new(Some("Germany")),
            Err(NormaliseError::UnknownRegion)
        );
        assert_eq!(with(Some("gb")).default_region(), Some("GB"));
        assert_eq!(with(None).default_region(), None);
    }

    #[test]
    fn errors_do_not_carry_the_number() {
        let error = norm(Some("US"), "212 555 010").unwrap_err();
        assert!(!error.to_string().contains("555"));
        let book = normalise_book(&[contact("A", &["0151"])], &with(Some("DE")));
        assert!(!format!("{book:?}").contains("0151"));
    }

    #[test]
    fn the_book_collapses_duplicates_in_first_occurrence_order() {
        let contacts = [
            contact("Anna", &["0151 1234 5678", "+1 212 555 0100"]),
            contact("Ben", &["+44 7700 900123"]),
            contact("Anna (work)", &["+49 151 12345678", "0049 151 1234 5678"]),
            contact("Carla", &["tel:+1-212-555-0100"]),
        ];
        let book = normalise_book(&contacts, &with(Some("DE")));
        let numbers: Vec<String> = book.numbers().iter().map(E164::to_string).collect();
        assert_eq!(numbers, ["+4915112345678", "+12125550100", "+447700900123"]);
        assert_eq!(book.owners(0), [0, 2]);
        assert_eq!(book.owners(1), [0, 3]);
        assert_eq!(book.owners(2), [1]);
        assert_eq!(book.owners(3), [] as [usize; 0]);
        assert!(book.unparseable().is_empty());
    }

    #[test]
    fn the_book_reports_what_it_cannot_read_with_the_contact() {
        let contacts = [
            contact("Anna", &["0151 1234 5678"]),
            contact("Front desk", &["call reception", "+1 212 555 0100"]),
            contact("Nobody", &[]),
            contact("Shorty", &["0151", ""]),
        ];
        let book = normalise_book(&contacts, &with(Some("DE")));
        assert_eq!(book.numbers().len(), 2);
        let rejected: Vec<(usize, &str, NormaliseError)> = book
            .unparseable()
            .iter()
            .map(|r| (r.contact, r.raw.as_str(), r.error))
            .collect();
        assert_eq!(
            rejected,
            [
                (1, "call reception", NormaliseError::Unparseable),
                (3, "0151", NormaliseError::Invalid),
                (3, "", NormaliseError::Empty),
            ]
        );

        let book = normalise_book(&contacts, &with(None));
        assert_eq!(book.numbers().len(), 1);
        assert_eq!(book.unparseable()[0].contact, 0);
        assert_eq!(book.unparseable()[0].error, NormaliseError::NeedsRegion);
    }

    /// A case's number written with random separators, in national or international form.
    fn written(case: &'static Case) -> impl Strategy<Value = String> {
        let separators = prop::collection::vec(
            prop::sample::select(vec!["", " ", "-", ".", "  ", " - "]),
            case.groups.len(),
        );
        (separators, 0..4usize).prop_map(move |(separators, style)| {
            let mut body = String::new();
            for (group, separator) in case.groups.iter().zip(&separators) {
                if !body.is_empty() {
                    body.push_str(separator);
                }
                body.push_str(group);
            }
            // Only the first group keeps a separator to the prefix; mirrors how people write.
            let first = separators.first().copied().unwrap_or_default();
            match style {
                0 => format!("+{}{first}{body}", case.code),
                1 => format!("00{}{first}{body}", case.code),
                2 => format!("tel:+{}-{}", case.code, body.replace([' ', '.'], "-")),
                _ => format!("{}{body}", if case.region == "US" { "" } else { "0" }),
            }
        })
    }

    proptest! {
        #[test]
        fn separators_do_not_matter(
            (case, raw) in prop::sample::select(CASES.iter().collect::<Vec<_>>())
                .prop_flat_map(|case| (Just(case), written(case)))
        ) {
            let got = norm(Some(case.region), &raw);
            prop_assert_eq!(got.as_deref(), Ok(case.e164), "{}", raw);
        }

        #[test]
        fn normalise_never_panics(raw in "\\PC{0,40}", region in prop::option::of("(DE|US|GB|FR|IN|AU|BR|RU)")) {
            let _ = with(region.as_deref()).normalise(&raw);
        }

        #[test]
        fn normalise_never_panics_on_number_like_text(
            raw in "[+0-9 ()./;=xtelTEL:-]{0,30}",
            region in prop::option::of("(DE|US|GB|FR|IN|AU|BR|RU)"),
        ) {
            if let Ok(number) = with(region.as_deref()).normalise(&raw) {
                // Whatever comes out is strict E.164.
                prop_assert!(E164::parse(&number.to_string()).is_ok());
            }
        }
    }
}
