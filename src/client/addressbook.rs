//! Address books exported by real phones and mail programs: vCard (2.1, 3.0, 4.0) and CSV.
//!
//! Readers keep numbers exactly as written (normalising is `client::normalise`'s job) and keep
//! every contact, including those without numbers, so that a contact's index is its position in
//! the file. Errors never quote contact data: they may end up in logs.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use calcard::vcard::{VCard, VCardParameterName, VCardParameterValue, VCardProperty, VCardValue};
use calcard::{Entry, Parser};

mod charset;

/// The name given to a contact whose file gives none.
pub const NO_NAME: &str = "(no name)";

/// One contact: a display name and its phone numbers as written in the file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Contact {
    /// Display name (vCard FN, else N, else ORG; CSV name columns), or [`NO_NAME`].
    pub name: String,
    /// Phone numbers as written (vCard lines unfolded and unescaped, whitespace trimmed), in file
    /// order; may be empty.
    pub numbers: Vec<String>,
    /// The character sets the card declares (`CHARSET=`) for its names or numbers that the
    /// reader does not know, each once, as labels cut down to ASCII letters, digits, `-`, `_`
    /// and `.`. Those values were read as UTF-8: the name may show U+FFFD (digits survive).
    pub unknown_charsets: Vec<String>,
}

impl fmt::Debug for Contact {
    /// Redacts the name and numbers, as `E164`'s `Debug` does, so they never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contact")
            .field("name", &"<redacted>")
            .field("numbers", &self.numbers.len())
            .field("unknown_charsets", &self.unknown_charsets)
            .finish()
    }
}

/// Why an address book could not be read. Never quotes contact data.
#[derive(Debug, thiserror::Error)]
pub enum AddressBookError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The text is vCard-shaped but unusable as an address book.
    #[error("vCard: {0}")]
    Vcard(&'static str),
    /// The CSV reader gave up on a record (rows may have any length and any encoding, so this is
    /// rare).
    #[error("CSV: malformed record near line {line}")]
    Csv {
        /// Line of the record the CSV reader stopped at (1-based; 0 if unknown).
        line: u64,
        /// The CSV reader's error.
        #[source]
        source: csv::Error,
    },
    /// The CSV header has none of the phone columns the common exports and hand-made sheets use.
    #[error("CSV: no phone column; looked for {GOOGLE_PHONE_COLUMNS} (Google), {} (Outlook), {} (Thunderbird and hand-made sheets), any case; name yours with --phone-column", OUTLOOK_PHONE_COLUMNS.join(", "), OTHER_PHONE_COLUMNS.join(", "))]
    NoPhoneColumn,
    /// The file is neither vCard nor CSV by extension or content.
    #[error("{}: not an address book; expected a vCard (.vcf, .vcard) or a CSV export (.csv)", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The text holds no vCard at all.
    #[error("vCard: no contacts (no BEGIN:VCARD) found")]
    NoContacts,
}

/// Reads every vCard in `text` (2.1, 3.0 or 4.0; CRLF or LF; folded lines; a leading BOM).
///
/// Every card becomes a contact, in file order, even with no number or no properties at all:
/// the index of a contact is then simply its position in the file, which is what a user sees
/// when told "contact 7 has an unreadable number". Lines outside cards are ignored.
///
/// Quoted-printable names and numbers are decoded in the charset they declare (`CHARSET=`,
/// vCard 2.1); `text` is text already, so other values are taken as they are. A file's bytes,
/// whose plain values may be in a declared charset too, go to [`read_vcard_bytes`].
pub fn read_vcard(text: &str) -> Result<Vec<Contact>, AddressBookError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    read_cards(&charset::values_in_declared_charsets(
        text.as_bytes(),
        charset::Values::Text,
    ))
}

/// Reads every vCard in a file's bytes, as [`read_vcard`] does: UTF-8 (a BOM dropped) or
/// UTF-16 with a BOM; in UTF-8, names and numbers that declare a charset (`CHARSET=Windows-1252`,
/// `ISO-8859-1`, `UTF-8`, … as old phones and Outlook write vCard 2.1), plain or
/// quoted-printable, are decoded from it. A charset the reader does not know is read as UTF-8
/// and named in the contact's [`Contact::unknown_charsets`]; every other byte that is not UTF-8
/// becomes U+FFFD.
pub fn read_vcard_bytes(bytes: &[u8]) -> Result<Vec<Contact>, AddressBookError> {
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return read_vcard(&decode(bytes));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    read_cards(&charset::values_in_declared_charsets(
        bytes,
        charset::Values::Bytes,
    ))
}

/// [`read_vcard`] on text whose declared charsets have been dealt with.
fn read_cards(text: &str) -> Result<Vec<Contact>, AddressBookError> {
    let mut parser = Parser::new(text);
    let mut contacts = Vec::new();
    let mut saw_calendar = false;
    loop {
        match parser.entry() {
            Entry::VCard(card) => contacts.push(contact_from_card(&card)),
            Entry::Eof => break,
            Entry::ICalendar(_) | Entry::UnexpectedComponentEnd { .. } => saw_calendar = true,
            Entry::TooManyComponents => {
                return Err(AddressBookError::Vcard("components nested too deeply"));
            }
            // Stray lines between cards (blank lines, export banners) carry no contact; an
            // unterminated card has already been returned as a card in the lenient mode.
            _ => {}
        }
    }
    if contacts.is_empty() {
        return Err(if saw_calendar {
            AddressBookError::Vcard("calendar data (BEGIN:VCALENDAR), not contacts")
        } else {
            AddressBookError::NoContacts
        });
    }
    Ok(contacts)
}

/// One card → one contact: TEL values as written, name from FN, N, ORG, else [`NO_NAME`].
fn contact_from_card(card: &VCard) -> Contact {
    let numbers = card
        .properties(&VCardProperty::Tel)
        .flat_map(|entry| entry.values.iter())
        .filter_map(value_text)
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect();
    let name = formatted_name(card)
        .or_else(|| name_from_n(card))
        .or_else(|| organisation(card))
        .unwrap_or_else(|| NO_NAME.to_owned());
    Contact {
        name,
        numbers,
        unknown_charsets: unknown_charsets(card),
    }
}

/// The labels of the unknown charsets the card's names and numbers declared, each once (see
/// [`charset::values_in_declared_charsets`], which marks them).
fn unknown_charsets(card: &VCard) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    let properties = [
        VCardProperty::Fn,
        VCardProperty::N,
        VCardProperty::Org,
        VCardProperty::Tel,
    ];
    for property in &properties {
        for entry in card.properties(property) {
            for parameter in &entry.params {
                if let (VCardParameterName::Other(name), VCardParameterValue::Text(label)) =
                    (&parameter.name, &parameter.value)
                    && name.eq_ignore_ascii_case(charset::UNKNOWN_CHARSET_PARAMETER)
                    && !labels.contains(label)
                {
                    labels.push(label.clone());
                }
            }
        }
    }
    labels
}

/// The text of a value; `None` for binary and typed (date, number) values.
fn value_text(value: &VCardValue) -> Option<Cow<'_, str>> {
    match value {
        VCardValue::Text(text) => Some(Cow::Borrowed(text)),
        VCardValue::Component(parts) => Some(Cow::Owned(parts.join(","))),
        _ => None,
    }
}

/// The first non-blank FN (its values joined: a stray comma in FN splits nothing).
fn formatted_name(card: &VCard) -> Option<String> {
    card.properties(&VCardProperty::Fn).find_map(|entry| {
        let parts: Vec<Cow<'_, str>> = entry.values.iter().filter_map(value_text).collect();
        let name = parts.join(" ").trim().to_owned();
        (!name.is_empty()).then_some(name)
    })
}

/// The first non-blank component of the first ORG that has one (the organisation, else a unit).
fn organisation(card: &VCard) -> Option<String> {
    card.properties(&VCardProperty::Org).find_map(|entry| {
        entry
            .values
            .iter()
            .filter_map(value_text)
            .map(|part| part.trim().to_owned())
            .find(|part| !part.is_empty())
    })
}

/// "Prefix Given Additional Family Suffix" from N (family; given; additional; prefix; suffix).
fn name_from_n(card: &VCard) -> Option<String> {
    let entry = card.property(&VCardProperty::N)?;
    let component = |i: usize| -> String {
        match entry.values.get(i) {
            Some(VCardValue::Text(text)) => text.trim().to_owned(),
            Some(VCardValue::Component(parts)) => parts
                .iter()
                .map(|part| part.trim())
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    };
    let name = [3, 1, 2, 0, 4]
        .into_iter()
        .map(component)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!name.is_empty()).then_some(name)
}

/// The phone columns of Google's CSV: `Phone 1 - Value`, `Phone 2 - Value`, ….
const GOOGLE_PHONE_COLUMNS: &str = "Phone N - Value";

/// The phone columns of Outlook's CSV export (Google's "Outlook CSV" uses them too).
const OUTLOOK_PHONE_COLUMNS: &[&str] = &[
    "Mobile Phone",
    "Business Phone",
    "Home Phone",
    "Business Phone 2",
    "Home Phone 2",
    "Other Phone",
    "Primary Phone",
    "Car Phone",
    "Company Main Phone",
    "Assistant's Phone",
    "Business Fax",
    "Home Fax",
    "Other Fax",
    "Pager",
    "Radio Phone",
    "Callback",
    "ISDN",
    "Telex",
    "TTY/TDD Phone",
];

/// Thunderbird's CSV export and the headings people give sheets they make by hand.
const OTHER_PHONE_COLUMNS: &[&str] = &[
    "Mobile Number",
    "Work Phone",
    "Fax Number",
    "Pager Number",
    "Phone",
    "Phone Number",
    "Mobile",
    "Mobile Phone Number",
    "Cell",
    "Cell Phone",
    "Telephone",
    "Tel",
];

/// Google puts several numbers of one type into one cell, separated by this.
const GOOGLE_CELL_SEPARATOR: &str = ":::";

/// Whether a (trimmed, lower-cased) header names a phone column: a known one, or one of
/// `extra` (the caller's `--phone-column`s, any case).
fn is_phone_column(header: &str, extra: &[String]) -> bool {
    let google = header
        .strip_prefix("phone ")
        .and_then(|rest| rest.strip_suffix(" - value"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    google
        || OUTLOOK_PHONE_COLUMNS
            .iter()
            .chain(OTHER_PHONE_COLUMNS)
            .any(|column| column.eq_ignore_ascii_case(header))
        || extra
            .iter()
            .any(|column| column.trim().eq_ignore_ascii_case(header))
}

/// Where the name parts of a CSV row are.
#[derive(Default)]
struct NameColumns {
    /// A single full-name column (`Name`, older Google exports).
    full: Option<usize>,
    /// Columns joined with spaces when there is no full name (first, middle, last, …).
    parts: Vec<usize>,
    /// Columns tried in turn when there is no person name (nickname, organisation).
    fallback: Vec<usize>,
}

impl NameColumns {
    /// Finds the name columns among (trimmed, lower-cased) headers.
    fn find(headers: &[String]) -> Self {
        let at = |name: &str| headers.iter().position(|h| h == name);
        // Newer Google and Outlook exports say First/Middle/Last; older Google ones say
        // Given/Additional/Family. A file has one set or the other.
        let parts = [
            "name prefix",
            "first name",
            "given name",
            "middle name",
            "additional name",
            "last name",
            "family name",
            "name suffix",
        ]
        .into_iter()
        .filter_map(at)
        .collect();
        let fallback = [
            "nickname",
            "organization name",
            "organization 1 - name",
            "company",
        ]
        .into_iter()
        .filter_map(at)
        .collect();
        Self {
            full: at("name"),
            parts,
            fallback,
        }
    }

    /// The row's display name, given a way to read its trimmed cells.
    fn name(&self, cell: impl Fn(usize) -> String) -> String {
        let full = self.full.map(&cell).filter(|name| !name.is_empty());
        full.or_else(|| {
            let joined = self
                .parts
                .iter()
                .map(|&i| cell(i))
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            (!joined.is_empty()).then_some(joined)
        })
        .or_else(|| {
            self.fallback
                .iter()
                .map(|&i| cell(i))
                .find(|name| !name.is_empty())
        })
        .unwrap_or_else(|| NO_NAME.to_owned())
    }
}

/// Reads a Google Contacts or Outlook CSV export (UTF-8 with or without BOM, or UTF-16 with BOM).
///
/// Headers are matched case-insensitively after trimming. Each non-blank row becomes a contact,
/// with or without numbers; a Google cell holding several numbers (`a ::: b`) gives each. Text
/// that is not UTF-8 (old Outlook exports use the Windows code page) is decoded lossily: names may
/// show replacement characters, but digits survive.
pub fn read_csv(bytes: &[u8]) -> Result<Vec<Contact>, AddressBookError> {
    read_csv_with_phone_columns(bytes, &[])
}

/// [`read_csv`], also taking the columns named in `extra` (matched like the known ones) as
/// phone columns.
pub fn read_csv_with_phone_columns(
    bytes: &[u8],
    extra: &[String],
) -> Result<Vec<Contact>, AddressBookError> {
    let text = decode(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .byte_headers()
        .map_err(csv_error)?
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_lowercase())
        .collect();
    let phones: Vec<usize> = (0..headers.len())
        .filter(|&i| is_phone_column(&headers[i], extra))
        .collect();
    if phones.is_empty() {
        return Err(AddressBookError::NoPhoneColumn);
    }
    let names = NameColumns::find(&headers);

    let mut contacts = Vec::new();
    for record in reader.byte_records() {
        let record = record.map_err(csv_error)?;
        if record.iter().all(|field| field.trim_ascii().is_empty()) {
            continue;
        }
        let cell = |i: usize| {
            record
                .get(i)
                .map(|field| String::from_utf8_lossy(field).trim().to_owned())
                .unwrap_or_default()
        };
        let numbers = phones
            .iter()
            .flat_map(|&i| {
                cell(i)
                    .split(GOOGLE_CELL_SEPARATOR)
                    .map(|number| number.trim().to_owned())
                    .filter(|number| !number.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        contacts.push(Contact {
            name: names.name(cell),
            numbers,
            unknown_charsets: Vec::new(),
        });
    }
    Ok(contacts)
}

/// Keeps where the CSV reader stopped, not what it read.
fn csv_error(source: csv::Error) -> AddressBookError {
    let line = source.position().map_or(0, csv::Position::line);
    AddressBookError::Csv { line, source }
}

/// Bytes → text: UTF-16 if it starts with a UTF-16 BOM, else UTF-8 (BOM dropped, lossy).
fn decode(bytes: &[u8]) -> Cow<'_, str> {
    let utf16 = |rest: &[u8], from: fn([u8; 2]) -> u16| {
        let units = rest.chunks_exact(2).map(|pair| from([pair[0], pair[1]]));
        Cow::Owned(
            char::decode_utf16(units)
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        )
    };
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        utf16(rest, u16::from_le_bytes)
    } else if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        utf16(rest, u16::from_be_bytes)
    } else {
        String::from_utf8_lossy(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
    }
}

/// Whether the text's first non-blank line starts a vCard.
fn looks_like_vcard(text: &str) -> bool {
    let start = text.trim_start_matches(['\u{FEFF}', ' ', '\t', '\r', '\n']);
    start
        .get(..11)
        .is_some_and(|head| head.eq_ignore_ascii_case("BEGIN:VCARD"))
}

/// Reads an address book file: vCard for `.vcf`/`.vcard`, CSV for `.csv`; any other name is
/// read as vCard if it starts with `BEGIN:VCARD`, else as CSV if it has phone columns.
pub fn read_file(path: &Path) -> Result<Vec<Contact>, AddressBookError> {
    read_file_with_phone_columns(path, &[])
}

/// [`read_file`], with `extra` phone columns for a CSV file (see
/// [`read_csv_with_phone_columns`]).
pub fn read_file_with_phone_columns(
    path: &Path,
    extra: &[String],
) -> Result<Vec<Contact>, AddressBookError> {
    let bytes = std::fs::read(path).map_err(|source| AddressBookError::Io {
        path: path.to_owned(),
        source,
    })?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("vcf" | "vcard") => read_vcard_bytes(&bytes),
        Some("csv") => read_csv_with_phone_columns(&bytes, extra),
        _ => {
            if looks_like_vcard(&decode(&bytes)) {
                read_vcard_bytes(&bytes)
            } else {
                read_csv_with_phone_columns(&bytes, extra).map_err(|error| match error {
                    AddressBookError::NoPhoneColumn | AddressBookError::Csv { .. } => {
                        AddressBookError::UnknownFormat {
                            path: path.to_owned(),
                        }
                    }
                    other => other,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(contacts: &[Contact]) -> Vec<&str> {
        contacts.iter().map(|c| c.name.as_str()).collect()
    }

    fn numbers(contact: &Contact) -> Vec<&str> {
        contact.numbers.iter().map(String::as_str).collect()
    }

    #[test]
    fn vcard_3_with_several_numbers() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Anna Beispiel\r\nN:Beispiel;Anna;;;\r\n\
                    TEL;TYPE=CELL:0151 1234 5678\r\nTEL;TYPE=WORK,VOICE:+49 30 1234567\r\n\
                    TEL:+1 212 555 0100\r\nEND:VCARD\r\n";
        let contacts = read_vcard(text).unwrap();
        assert_eq!(names(&contacts), ["Anna Beispiel"]);
        assert_eq!(
            numbers(&contacts[0]),
            ["0151 1234 5678", "+49 30 1234567", "+1 212 555 0100"]
        );
    }

    #[test]
    fn vcard_4_uri_values_and_groups() {
        let text = "BEGIN:VCARD\nVERSION:4.0\nFN:Ben Muster\n\
                    TEL;VALUE=uri;TYPE=\"voice,cell\":tel:+1-212-555-0101\n\
                    item1.TEL:+44 7700 900123\nitem1.X-ABLabel:Boat\nEND:VCARD\n";
        let contacts = read_vcard(text).unwrap();
        assert_eq!(
            numbers(&contacts[0]),
            ["tel:+1-212-555-0101", "+44 7700 900123"]
        );
    }

    #[test]
    fn folded_lines_are_unfolded() {
        // RFC 6350 §3.2: CRLF (or LF) then one space or tab continues the line; both go.
        let text = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Carla\r\n  Fictional\r\n\
                    TEL:+49 151\r\n 1234\r\n\t5678\r\nEND:VCARD\r\n";
        let contacts = read_vcard(text).unwrap();
        assert_eq!(names(&contacts), ["Carla Fictional"]);
        assert_eq!(numbers(&contacts[0]), ["+49 15112345678"]);

        let lf = text.replace("\r\n", "\n");
        let contacts = read_vcard(&lf).unwrap();
        assert_eq!(names(&contacts), ["Carla Fictional"]);
        assert_eq!(numbers(&contacts[0]), ["+49 15112345678"]);
    }

    #[test]
    fn vcard_2_1_bare_types_and_quoted_printable() {
        let text = "BEGIN:VCARD\r\nVERSION:2.1\r\nN:Doe;Jo\r\nTEL;CELL;PREF:+44 7700 900124\r\n\
                    TEL;WORK;ENCODING=QUOTED-PRINTABLE:+44=207700=20900125\r\nEND:VCARD\r\n";
        let contacts = read_vcard(text).unwrap();
        assert_eq!(names(&contacts), ["Jo Doe"]);
        assert_eq!(
            numbers(&contacts[0]),
            ["+44 7700 900124", "+44 7700 900125"]
        );
    }

    #[test]
    fn declared_charsets_in_a_files_bytes() {
        let bytes =
            b"\xEF\xBB\xBFBEGIN:VCARD\r\nVERSION:2.1\r\nORG;CHARSET=Windows-1252:\x8Cuvre\r\n\
                      TEL;CHARSET=ISO-8859-1:+44 7700 900126\r\nEND:VCARD\r\n\
                      BEGIN:VCARD\r\nVERSION:2.1\r\nN;CHARSET=X-Unknown:Zo\xC3\xAB\r\n\
                      TEL;CHARSET=X-Other;QUOTED-PRINTABLE:+44=207700=20900127\r\n\
                      FN;CHARSET=X-Unknown;BASE64:Wm/Dqw==\r\nEND:VCARD\r\n";
        let contacts = read_vcard_bytes(bytes).unwrap();
        assert_eq!(names(&contacts), ["Œuvre", "Zoë"]);
        assert_eq!(numbers(&contacts[0]), ["+44 7700 900126"]);
        assert_eq!(numbers(&contacts[1]), ["+44 7700 900127"]);
        assert!(contacts[0].unknown_charsets.is_empty());
        // Each unknown charset once, in the order the card declares them.
        assert_eq!(contacts[1].unknown_charsets, ["X-Unknown", "X-Other"]);
    }

    #[test]
    fn declared_charsets_in_text_and_utf16() {
        // Text is text: only quoted-printable values are decoded from their charset.
        let text = "BEGIN:VCARD\r\nVERSION:2.1\r\nFN;CHARSET=Windows-1252:Müller\r\n\
                    N;CHARSET=Windows-1252;ENCODING=QUOTED-PRINTABLE:=8Cuvre\r\nEND:VCARD\r\n\
                    BEGIN:VCARD\r\nVERSION:2.1\r\nN;CHARSET=X-Unknown;QUOTED-PRINTABLE:Zo=C3=AB\r\n\
                    END:VCARD\r\n";
        let contacts = read_vcard(text).unwrap();
        assert_eq!(names(&contacts), ["Müller", "Zoë"]);
        assert_eq!(contacts[1].unknown_charsets, ["X-Unknown"]);
        // A UTF-16 file is text once its BOM says how to read it.
        for bom in [[0xFF, 0xFE], [0xFE, 0xFF]] {
            let mut bytes = bom.to_vec();
            let units = text.encode_utf16();
            if bom[0] == 0xFF {
                bytes.extend(units.flat_map(u16::to_le_bytes));
            } else {
                bytes.extend(units.flat_map(u16::to_be_bytes));
            }
            assert_eq!(read_vcard_bytes(&bytes).unwrap(), contacts);
        }
    }

    #[test]
    fn bom_empty_cards_and_cards_without_numbers_are_kept_in_order() {
        let text = "\u{FEFF}BEGIN:VCARD\r\nEND:VCARD\r\n\r\n\
                    BEGIN:VCARD\r\nVERSION:3.0\r\nFN:No Number\r\nEMAIL:x@example.org\r\nEND:VCARD\r\n\
                    BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Has One\r\nTEL:+1 212 555 0102\r\nEND:VCARD\r\n";
        let contacts = read_vcard(text).unwrap();
        assert_eq!(names(&contacts), [NO_NAME, "No Number", "Has One"]);
        assert!(contacts[0].numbers.is_empty());
        assert!(contacts[1].numbers.is_empty());
        assert_eq!(numbers(&contacts[2]), ["+1 212 555 0102"]);
    }

    #[test]
    fn names_fall_back_from_fn_to_n_to_org() {
        let text = "BEGIN:VCARD\nVERSION:3.0\nFN:\nN:Muster;Erika;Maria;Dr.;\nEND:VCARD\n\
                    BEGIN:VCARD\nVERSION:3.0\nN:;;;;\nORG:Acme\\, Inc.;Sales\nEND:VCARD\n\
                    BEGIN:VCARD\nVERSION:3.0\nORG:;Unit only\nEND:VCARD\n\
                    BEGIN:VCARD\nVERSION:3.0\nTEL:+1 212 555 0103\nEND:VCARD\n";
        let contacts = read_vcard(text).unwrap();
        assert_eq!(
            names(&contacts),
            ["Dr. Erika Maria Muster", "Acme, Inc.", "Unit only", NO_NAME]
        );
    }

    #[test]
    fn no_cards_is_an_error() {
        assert!(matches!(read_vcard(""), Err(AddressBookError::NoContacts)));
        assert!(matches!(
            read_vcard("Name,Phone\nAnna,123\n"),
            Err(AddressBookError::NoContacts)
        ));
        assert!(matches!(
            read_vcard("BEGIN:VCALENDAR\nBEGIN:VEVENT\nEND:VEVENT\nEND:VCALENDAR\n"),
            Err(AddressBookError::Vcard(_))
        ));
    }

    #[test]
    fn google_csv_with_multi_number_cells() {
        let csv = "Name,Given Name,Family Name,Phone 1 - Type,Phone 1 - Value,Phone 2 - Type,Phone 2 - Value\r\n\
                   Anna Beispiel,Anna,Beispiel,Mobile,+49 151 1234 5678 ::: 030 1234567,Work,+1 212 555 0100\r\n\
                   \"Muster, Erika\",Erika,Muster,Home,\"+44 7700 900123\",,\r\n\
                   Nobody,,,,,,\r\n";
        let contacts = read_csv(csv.as_bytes()).unwrap();
        assert_eq!(
            names(&contacts),
            ["Anna Beispiel", "Muster, Erika", "Nobody"]
        );
        assert_eq!(
            numbers(&contacts[0]),
            ["+49 151 1234 5678", "030 1234567", "+1 212 555 0100"]
        );
        assert_eq!(numbers(&contacts[1]), ["+44 7700 900123"]);
        assert!(contacts[2].numbers.is_empty());
    }

    #[test]
    fn newer_google_csv_splits_the_name() {
        let csv = "First Name,Middle Name,Last Name,Organization Name,Phone 1 - Label,Phone 1 - Value\n\
                   Ben,,Muster,,Mobile,0151 2345 6789\n\
                   ,,,Fictional GmbH,Work,030 1234567\n";
        let contacts = read_csv(csv.as_bytes()).unwrap();
        assert_eq!(names(&contacts), ["Ben Muster", "Fictional GmbH"]);
        assert_eq!(numbers(&contacts[1]), ["030 1234567"]);
    }

    #[test]
    fn outlook_csv() {
        let csv = "\u{FEFF}\"First Name\",\"Middle Name\",\"Last Name\",\"Business Phone\",\"Home Phone\",\"Mobile Phone\",\"Assistant's Phone\",\"TTY/TDD Phone\"\r\n\
                   \"Carla\",\"\",\"Fictional\",\"+1 (212) 555-0104\",\"\",\"+1 212 555 0105\",\"\",\"\"\r\n";
        let contacts = read_csv(csv.as_bytes()).unwrap();
        assert_eq!(names(&contacts), ["Carla Fictional"]);
        assert_eq!(
            numbers(&contacts[0]),
            ["+1 (212) 555-0104", "+1 212 555 0105"]
        );
    }

    #[test]
    fn csv_headers_are_trimmed_and_case_insensitive_and_quotes_hold_newlines() {
        let csv = " NAME , phone 1 - VALUE ,MOBILE PHONE\n\
                   \"Two\nLines\",\" 0151 1234 5678 \",\"+1 212 555 0106\"\n";
        let contacts = read_csv(csv.as_bytes()).unwrap();
        assert_eq!(names(&contacts), ["Two\nLines"]);
        assert_eq!(numbers(&contacts[0]), ["0151 1234 5678", "+1 212 555 0106"]);
    }

    #[test]
    fn utf16_csv_with_bom() {
        let text = "Name,Mobile Phone\r\nZoë,+1 212 555 0107\r\n";
        let mut bytes = vec![0xFF, 0xFE];
        bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let contacts = read_csv(&bytes).unwrap();
        assert_eq!(names(&contacts), ["Zoë"]);
        assert_eq!(numbers(&contacts[0]), ["+1 212 555 0107"]);
    }

    #[test]
    fn thunderbird_and_hand_made_sheets_are_read() {
        let thunderbird = "First Name,Last Name,Display Name,Work Phone,Home Phone,Fax Number,Pager Number,Mobile Number\n\
                           Anna,Berg,Anna Berg,+49 30 1234567,,,,+49 151 1234567\n";
        let contacts = read_csv(thunderbird.as_bytes()).unwrap();
        assert_eq!(names(&contacts), ["Anna Berg"]);
        assert_eq!(numbers(&contacts[0]), ["+49 30 1234567", "+49 151 1234567"]);
        for header in [
            "Name,Phone",
            "name,MOBILE",
            "Name, Telephone ",
            "Name,Cell Phone",
        ] {
            let sheet = format!("{header}\nZoë,+1 212 555 0107\n");
            let contacts = read_csv(sheet.as_bytes()).unwrap();
            assert_eq!(numbers(&contacts[0]), ["+1 212 555 0107"], "{header}");
        }
    }

    #[test]
    fn a_named_phone_column_is_read_in_any_case() {
        let sheet = b"Who,Handy,Notes\nAnna,+49 151 1234567,call after six\n";
        assert!(matches!(
            read_csv(sheet),
            Err(AddressBookError::NoPhoneColumn)
        ));
        let contacts = read_csv_with_phone_columns(sheet, &[" handy ".to_owned()]).unwrap();
        assert_eq!(numbers(&contacts[0]), ["+49 151 1234567"]);
        // Only the named column is taken: the notes are not a number.
        assert_eq!(contacts[0].numbers.len(), 1);
    }

    #[test]
    fn csv_without_phone_columns_says_what_it_looked_for() {
        let error = read_csv(b"Name,E-mail 1 - Value\nAnna,anna@example.org\n").unwrap_err();
        assert!(matches!(error, AddressBookError::NoPhoneColumn));
        let message = error.to_string();
        assert!(message.contains("Phone N - Value"), "{message}");
        assert!(message.contains("Mobile Phone"), "{message}");
        assert!(message.contains("Mobile Number"), "{message}");
        assert!(message.contains("--phone-column"), "{message}");
        assert!(!message.contains("anna"), "{message}");
        assert!(matches!(
            read_csv(b""),
            Err(AddressBookError::NoPhoneColumn)
        ));
    }

    #[test]
    fn debug_is_redacted() {
        let contact = Contact {
            name: "Anna".into(),
            numbers: vec!["0151 1234 5678".into()],
            unknown_charsets: vec!["X-Foo".into()],
        };
        let debug = format!("{contact:?}");
        assert!(
            !debug.contains("Anna") && !debug.contains("0151"),
            "{debug}"
        );
    }

    /// Text made of vCard fragments, so the parser gets past BEGIN:VCARD and into the cards.
    fn vcardish() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            Just("BEGIN:VCARD".to_owned()),
            Just("END:VCARD".to_owned()),
            Just("VERSION:2.1".to_owned()),
            Just("VERSION:4.0".to_owned()),
            Just("TEL;TYPE=CELL:".to_owned()),
            Just("item1.TEL;VALUE=uri:tel:+".to_owned()),
            Just("N:".to_owned()),
            Just("FN:".to_owned()),
            Just("ORG:".to_owned()),
            Just(";ENCODING=QUOTED-PRINTABLE:=".to_owned()),
            Just(";ENCODING=b:".to_owned()),
            Just(";CHARSET=Windows-1252:".to_owned()),
            Just(";CHARSET=X-Unknown;QUOTED-PRINTABLE:=".to_owned()),
            Just("=\r\n".to_owned()),
            Just("BEGIN:VCALENDAR".to_owned()),
            Just("\r\n".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n ".to_owned()),
            Just("\\,;:=\"".to_owned()),
            "\\PC{0,12}",
        ];
        prop::collection::vec(fragment, 0..40).prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn read_vcard_never_panics(text in vcardish()) {
            let _ = read_vcard(&text);
        }

        #[test]
        fn read_vcard_bytes_never_panics(
            text in vcardish(),
            bytes in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut all = text.into_bytes();
            all.extend(bytes);
            let _ = read_vcard_bytes(&all);
        }

        #[test]
        fn read_vcard_never_panics_on_any_text(text in "\\PC{0,200}") {
            let _ = read_vcard(&text);
        }

        #[test]
        fn read_csv_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_csv(&bytes);
        }

        #[test]
        fn read_csv_never_panics_on_csvish_text(
            rows in prop::collection::vec("[a-zA-Z0-9 ,\"\r\n:+-]{0,40}", 0..8)
        ) {
            let text = format!("Name,Phone 1 - Value,Mobile Phone\n{}", rows.concat());
            let _ = read_csv(text.as_bytes());
        }
    }
}
