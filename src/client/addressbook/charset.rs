//! vCard values in the character set their `CHARSET` parameter declares (vCard 2.1 and the
//! exporters that still write it: old phones, Outlook), made UTF-8 before `calcard` reads them.

use encoding_rs::Encoding;

/// The properties whose values the reader uses: the names (FN, N, ORG) and the numbers (TEL).
const DECODED: [&[u8]; 4] = [b"FN", b"N", b"ORG", b"TEL"];

/// The parameter a rewritten property carries when its declared charset is unknown: its label
/// (ASCII letters, digits, `-`, `_`, `.`; at most [`MAX_LABEL`] of them). `read_vcard` turns it
/// into the contact's [`super::Contact::unknown_charsets`].
pub(super) const UNKNOWN_CHARSET_PARAMETER: &str = "X-CONTACT-DISCOVERY-UNKNOWN-CHARSET";

/// The longest charset label passed on (IANA's longest names are about 45 characters).
const MAX_LABEL: usize = 45;

/// Where the values' bytes come from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Values {
    /// The file's own bytes: a value written without an encoding is in its declared charset.
    Bytes,
    /// Text already decoded (a `&str`): only quoted-printable values are still bytes.
    Text,
}

/// `vcard` (the bytes of a vCard file, no byte order mark) as UTF-8 text, with the values of
/// FN, N, ORG and TEL (in any group) that declare a `CHARSET` decoded from it.
///
/// Why this is done here, on the bytes, and not left to `calcard`: `calcard` parses `&str`, so a
/// file must be text before it sees it, and Windows-1252 or ISO-8859-1 bytes that are not UTF-8
/// ("M\xFCller") would be U+FFFD by then; and it applies `CHARSET` only to quoted-printable and
/// base64 values, through mail-parser's own tables, making a value of a charset those do not
/// know a binary one (the name is lost without a word). So each such property line is rewritten:
/// unfolded (and for quoted-printable, joined across soft line breaks), its value
/// quoted-printable-decoded if so encoded, decoded from the declared charset with `encoding_rs`
/// (WHATWG labels: `ISO-8859-1` and `ASCII` read as Windows-1252, as browsers and mail programs
/// do, so `€` written as 0x80 survives), and written back as UTF-8 without its `CHARSET` and
/// `ENCODING` parameters (line breaks in the value as `\n`). A charset `encoding_rs` does not
/// know is read as UTF-8 (invalid bytes become U+FFFD; digits survive) and the line gets
/// [`UNKNOWN_CHARSET_PARAMETER`] naming it. Base64 values and every other line are left as they
/// are (invalid UTF-8 in them becoming U+FFFD, as before).
pub(super) fn values_in_declared_charsets(vcard: &[u8], values: Values) -> String {
    let mut out = String::with_capacity(vcard.len() + vcard.len() / 8);
    let mut rest = vcard;
    while !rest.is_empty() {
        let line = &rest[..line_end(rest)];
        let Some(head) = Head::parse(line).filter(|head| head.rewrites(values)) else {
            out.push_str(&String::from_utf8_lossy(line));
            rest = &rest[line.len()..];
            continue;
        };
        // The value, joined from its physical lines, and how many bytes those take.
        let (value, taken) = if head.quoted_printable {
            soft_broken_value(rest, head.value_start)
        } else {
            folded_value(rest, head.value_start)
        };
        rest = &rest[taken..];
        let bytes = if head.quoted_printable {
            quoted_printable_decode(&value)
        } else {
            value
        };
        let (text, unknown) = match Encoding::for_label_no_replacement(head.charset) {
            Some(encoding) => (encoding.decode_without_bom_handling(&bytes).0, None),
            None => (String::from_utf8_lossy(&bytes), Some(label(head.charset))),
        };
        out.push_str(&String::from_utf8_lossy(head.name));
        for parameter in &head.kept {
            out.push(';');
            out.push_str(&String::from_utf8_lossy(parameter));
        }
        if let Some(unknown) = unknown {
            out.push(';');
            out.push_str(UNKNOWN_CHARSET_PARAMETER);
            out.push('=');
            out.push_str(&unknown);
        }
        out.push(':');
        out.push_str(&text.replace("\r\n", "\\n").replace(['\r', '\n'], "\\n"));
        out.push_str("\r\n");
    }
    out
}

/// The length of the first line of `bytes`, its line feed included.
fn line_end(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |at| at + 1)
}

/// `line` without its line ending (LF or CRLF).
fn without_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The head of a property line (`[group.]NAME;PARAM…:`) of a property whose charset is declared.
struct Head<'l> {
    /// `[group.]NAME`, as written.
    name: &'l [u8],
    /// The declared charset's label, quotes removed.
    charset: &'l [u8],
    /// Whether the value is quoted-printable.
    quoted_printable: bool,
    /// Whether the value has another encoding (base64): then it is left to `calcard`.
    other_encoding: bool,
    /// The parameters other than CHARSET and ENCODING, as written.
    kept: Vec<&'l [u8]>,
    /// Where the value starts in the line (after the colon).
    value_start: usize,
}

impl<'l> Head<'l> {
    /// The head of `line` if it is FN, N, ORG or TEL (any group, any case) and declares a
    /// charset; `None` for every other line.
    fn parse(line: &'l [u8]) -> Option<Self> {
        let colon = outside_quotes(line, b':').next()?;
        let head = &line[..colon];
        let mut cuts = outside_quotes(head, b';');
        let name_end = cuts.next().unwrap_or(head.len());
        let name = &head[..name_end];
        let property = name.rsplit(|&b| b == b'.').next().unwrap_or(name);
        if !DECODED
            .iter()
            .any(|p| p.eq_ignore_ascii_case(property.trim_ascii()))
        {
            return None;
        }
        let mut parsed = Self {
            name,
            charset: b"",
            quoted_printable: false,
            other_encoding: false,
            kept: Vec::new(),
            value_start: colon + 1,
        };
        let mut charset = None;
        let mut start = name_end + 1;
        while start <= head.len() {
            let end = cuts.next().unwrap_or(head.len());
            let parameter = &head[start..end];
            start = end + 1;
            let (key, value) = match parameter.iter().position(|&b| b == b'=') {
                Some(at) => (parameter[..at].trim_ascii(), Some(&parameter[at + 1..])),
                None => (b"".as_slice(), None),
            };
            let value = value.map(|v| {
                let v = v.trim_ascii();
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            });
            // vCard 2.1 also writes the encoding bare (`TEL;QUOTED-PRINTABLE:`).
            let encoding = match value {
                Some(value) if key.eq_ignore_ascii_case(b"ENCODING") => Some(value),
                None if is_encoding(parameter.trim_ascii()) => Some(parameter.trim_ascii()),
                _ => None,
            };
            if let Some(encoding) = encoding {
                if encoding.eq_ignore_ascii_case(b"QUOTED-PRINTABLE") {
                    parsed.quoted_printable = true;
                } else if !encoding.eq_ignore_ascii_case(b"8BIT")
                    && !encoding.eq_ignore_ascii_case(b"7BIT")
                {
                    parsed.other_encoding = true;
                }
            } else if key.eq_ignore_ascii_case(b"CHARSET") {
                charset = value;
            } else if !parameter.trim_ascii().is_empty() {
                parsed.kept.push(parameter);
            }
        }
        parsed.charset = charset?;
        Some(parsed)
    }

    /// Whether the line is rewritten: not base64 (left to `calcard`), and for decoded text only
    /// if quoted-printable (a plain value is text already).
    fn rewrites(&self, values: Values) -> bool {
        !self.other_encoding && (self.quoted_printable || values == Values::Bytes)
    }
}

/// Whether a bare vCard 2.1 parameter names an encoding.
fn is_encoding(parameter: &[u8]) -> bool {
    [b"QUOTED-PRINTABLE".as_slice(), b"BASE64", b"8BIT", b"7BIT"]
        .iter()
        .any(|e| e.eq_ignore_ascii_case(parameter))
}

/// The positions of `byte` in `text` outside double quotes.
fn outside_quotes(text: &[u8], byte: u8) -> impl Iterator<Item = usize> + '_ {
    let mut quoted = false;
    text.iter().enumerate().filter_map(move |(at, &b)| {
        if b == b'"' {
            quoted = !quoted;
        }
        (b == byte && !quoted).then_some(at)
    })
}

/// The value of the property line at the start of `bytes` (value from `start`), unfolded: a
/// line break followed by a space or tab continues it (both removed, as `calcard` does). Returns
/// the value and how many bytes its lines take.
fn folded_value(bytes: &[u8], start: usize) -> (Vec<u8>, usize) {
    let mut taken = line_end(bytes);
    let mut value = without_line_ending(&bytes[start..taken]).to_vec();
    while let Some(&(b' ' | b'\t')) = bytes.get(taken) {
        let next = &bytes[taken..taken + line_end(&bytes[taken..])];
        value.extend_from_slice(without_line_ending(&next[1..]));
        taken += next.len();
    }
    (value, taken)
}

/// The quoted-printable value of the property line at the start of `bytes` (value from
/// `start`), joined across soft line breaks (a line ending in `=` goes on in the next line,
/// which vCard 2.1 writers do not indent). Returns the value and how many bytes its lines take.
fn soft_broken_value(bytes: &[u8], start: usize) -> (Vec<u8>, usize) {
    let mut taken = line_end(bytes);
    let mut value = without_line_ending(&bytes[start..taken]).to_vec();
    while value.last() == Some(&b'=') {
        value.pop();
        if taken == bytes.len() {
            break;
        }
        let next = &bytes[taken..taken + line_end(&bytes[taken..])];
        value.extend_from_slice(without_line_ending(next));
        taken += next.len();
    }
    (value, taken)
}

/// Quoted-printable to bytes: `=XX` (hex, any case) is one byte; anything else, including an
/// `=` not followed by two hex digits, stays as it is.
fn quoted_printable_decode(value: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(value.len());
    let mut at = 0;
    while at < value.len() {
        let escaped = match value[at..] {
            [b'=', high, low, ..] => hex(high).zip(hex(low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                // Two hex digits: at most 0xFF.
                out.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                at += 3;
            }
            None => {
                out.push(value[at]);
                at += 1;
            }
        }
    }
    out
}

/// A charset label safe to repeat in a parameter and a warning: its ASCII letters, digits, `-`,
/// `_` and `.`, at most [`MAX_LABEL`] of them; `?` if none.
fn label(charset: &[u8]) -> String {
    let label: String = charset
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        .take(MAX_LABEL)
        .map(|&b| char::from(b))
        .collect();
    if label.is_empty() {
        "?".to_owned()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(vcard: &[u8]) -> String {
        values_in_declared_charsets(vcard, Values::Bytes)
    }

    #[test]
    fn plain_values_are_decoded_from_their_charset() {
        assert_eq!(
            bytes(b"N;CHARSET=Windows-1252:M\xFCller;J\xFCrgen\r\nFN;CHARSET=ISO-8859-1:\x80 \x8Cuvre\r\n"),
            "N:Müller;Jürgen\r\nFN:€ Œuvre\r\n"
        );
        // Any case, any group, quoted, parameters kept in their order.
        assert_eq!(
            bytes(b"item1.tel;type=CELL;charset=\"windows-1252\";X-A=b:+49 \xA0151\n"),
            "item1.tel;type=CELL;X-A=b:+49 \u{A0}151\r\n"
        );
        // vCard 2.1's bare parameters (types) are kept, and are no encoding.
        assert_eq!(
            bytes(b"TEL;CELL;PREF;CHARSET=Windows-1252:+49\xA0151\r\n"),
            "TEL;CELL;PREF:+49\u{A0}151\r\n"
        );
        // Other properties and lines without a charset are passed on, invalid UTF-8 lossily.
        assert_eq!(
            bytes(b"NOTE;CHARSET=Windows-1252:M\xFCller\nFN:M\xFCller\nFN:Zo\xC3\xAB\n"),
            "NOTE;CHARSET=Windows-1252:M\u{FFFD}ller\nFN:M\u{FFFD}ller\nFN:Zoë\n"
        );
    }

    #[test]
    fn quoted_printable_values_are_decoded_then_read_in_their_charset() {
        assert_eq!(
            bytes(b"FN;ENCODING=QUOTED-PRINTABLE;CHARSET=Windows-1252:M=FCller =80 =8cuvre\r\n"),
            "FN:Müller € Œuvre\r\n"
        );
        assert_eq!(
            bytes(b"FN;CHARSET=UTF-8;QUOTED-PRINTABLE:M=C3=BCller=\r\n=20J=C3=BCrgen\r\nTEL:1\r\n"),
            "FN:Müller Jürgen\r\nTEL:1\r\n"
        );
        // Line breaks in a value become `\n`; a stray `=` stays.
        assert_eq!(
            bytes(b"ORG;ENCODING=QUOTED-PRINTABLE;CHARSET=UTF-8:A=0D=0AB=0AC=0DD =3 =ZZ=\n"),
            "ORG:A\\nB\\nC\\nD =3 =ZZ\r\n"
        );
        // In decoded text only quoted-printable values are rewritten.
        let text = "FN;CHARSET=Windows-1252:Müller\nN;CHARSET=Windows-1252;ENCODING=QUOTED-PRINTABLE:M=FCller\n";
        assert_eq!(
            values_in_declared_charsets(text.as_bytes(), Values::Text),
            "FN;CHARSET=Windows-1252:Müller\nN:Müller\r\n"
        );
    }

    #[test]
    fn folded_values_are_unfolded() {
        assert_eq!(
            bytes(b"FN;CHARSET=Windows-1252:M\xFCl\r\n ler\r\n\tJ\xFCrgen\r\nTEL:1\r\n"),
            "FN:MüllerJürgen\r\nTEL:1\r\n"
        );
    }

    #[test]
    fn unknown_charsets_are_read_as_utf8_and_named() {
        assert_eq!(
            bytes(b"FN;CHARSET=X-Martian:Zo\xC3\xAB \xFF\r\n"),
            format!("FN;{UNKNOWN_CHARSET_PARAMETER}=X-Martian:Zoë \u{FFFD}\r\n")
        );
        // The label is cut down to safe characters.
        assert_eq!(
            bytes(b"FN;CHARSET=\"a:b,c\xFF\":x\r\n"),
            format!("FN;{UNKNOWN_CHARSET_PARAMETER}=abc:x\r\n")
        );
        assert_eq!(label(b"\xFF"), "?");
        assert_eq!(label(&[b'a'; 60]).len(), MAX_LABEL);
        // `replacement` is WHATWG's label for charsets that must not be decoded: unknown here.
        assert!(bytes(b"FN;CHARSET=ISO-2022-KR:x\r\n").contains(UNKNOWN_CHARSET_PARAMETER));
    }

    #[test]
    fn base64_and_lines_without_value_are_left_alone() {
        let line = b"FN;CHARSET=Windows-1252;ENCODING=BASE64:TfxsbGVy\r\n";
        assert_eq!(bytes(line).as_bytes(), line);
        assert_eq!(
            bytes(b"FN;CHARSET=Windows-1252\r\n"),
            "FN;CHARSET=Windows-1252\r\n"
        );
        assert_eq!(bytes(b""), "");
        // The last line may lack its line break; a soft break at the end of the file ends it.
        assert_eq!(bytes(b"FN;CHARSET=UTF-8;QUOTED-PRINTABLE:A="), "FN:A\r\n");
    }

    #[test]
    fn eight_bit_is_no_encoding() {
        assert_eq!(
            bytes(b"FN;CHARSET=Windows-1252;ENCODING=8BIT:M\xFCller\r\n"),
            "FN:Müller\r\n"
        );
    }
}
