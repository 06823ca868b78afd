//! Reading real-looking address book exports from files, and normalising what they hold.

use std::path::{Path, PathBuf};

use contact_discovery::client::addressbook::{
    AddressBookError, Contact, NO_NAME, read_csv, read_file, read_vcard, read_vcard_bytes,
};
use contact_discovery::client::normalise::{NormaliseError, Normaliser, normalise_book};
use proptest::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/addressbooks")
        .join(name)
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn names(contacts: &[Contact]) -> Vec<&str> {
    contacts.iter().map(|c| c.name.as_str()).collect()
}

fn numbers(contact: &Contact) -> Vec<&str> {
    contact.numbers.iter().map(String::as_str).collect()
}

/// The E.164 numbers of a book read in Germany, and the (contact, error) of what failed.
fn normalised_in_germany(contacts: &[Contact]) -> (Vec<String>, Vec<(usize, NormaliseError)>) {
    let book = normalise_book(contacts, &Normaliser::new(Some("DE")).unwrap());
    let numbers = book.numbers().iter().map(ToString::to_string).collect();
    let rejected = book
        .unparseable()
        .iter()
        .map(|r| (r.contact, r.error))
        .collect();
    (numbers, rejected)
}

#[test]
fn apple_vcard_with_bom_crlf_folding_groups_and_empty_cards() {
    let contacts = read_file(&fixture("apple.vcf")).unwrap();
    assert_eq!(
        names(&contacts),
        [
            "Anna Beispiel",
            NO_NAME,
            "Nora Ohnenummer",
            "Praxis Dr. Erfunden"
        ]
    );
    assert_eq!(
        numbers(&contacts[0]),
        ["+49 151 1234 5678", "0151 87654321", "+1 (212) 555-0100"]
    );
    assert!(contacts[1].numbers.is_empty());
    assert!(contacts[2].numbers.is_empty());
    assert_eq!(numbers(&contacts[3]), ["call reception"]);

    let (e164, rejected) = normalised_in_germany(&contacts);
    assert_eq!(e164, ["+4915112345678", "+4915187654321", "+12125550100"]);
    assert_eq!(rejected, [(3, NormaliseError::Unparseable)]);
}

#[test]
fn android_vcard_2_1_with_quoted_printable_names() {
    let contacts = read_file(&fixture("android-2.1.vcf")).unwrap();
    assert_eq!(names(&contacts), ["Jürgen Müller", "Olivia Placeholder"]);
    assert_eq!(
        numbers(&contacts[0]),
        ["+4915112345601", "030-12345601", "+44 7700 900124"]
    );
    let (e164, rejected) = normalised_in_germany(&contacts);
    assert_eq!(
        e164,
        [
            "+4915112345601",
            "+493012345601",
            "+447700900124",
            "+61491570156"
        ]
    );
    assert!(rejected.is_empty());
}

#[test]
fn vcard_2_1_names_in_their_declared_charsets() {
    // Outlook's and old phones' exports: names (and numbers) in Windows-1252, ISO-8859-1 or
    // UTF-8, as the bytes themselves or quoted-printable (issue 15).
    let contacts = read_file(&fixture("charsets-2.1.vcf")).unwrap();
    assert_eq!(
        names(&contacts),
        [
            "Jürgen Müller",
            "€-Büro Œuvre",
            "Zoë Müller",
            "Renée Dürr",
            "Élodie Œuvre €",
            "Zo\u{FFFD} Unbekannt",
        ]
    );
    assert_eq!(numbers(&contacts[0]), ["+49 30 1234567", "0151 1234 5601"]);
    assert_eq!(numbers(&contacts[1]), ["+44 7700 900125"]);
    assert_eq!(numbers(&contacts[2]), ["030 12345602"]);
    assert_eq!(numbers(&contacts[4]), ["+33 6 39 98 12 35"]);
    // A charset the reader does not know: read as UTF-8, and the contact says which.
    let unknown: Vec<&[String]> = contacts
        .iter()
        .map(|c| c.unknown_charsets.as_slice())
        .collect();
    assert_eq!(
        unknown,
        [&[][..], &[], &[], &[], &[], &["X-MAC-KLINGON".to_owned()]]
    );

    let (e164, rejected) = normalised_in_germany(&contacts);
    assert_eq!(
        e164,
        [
            "+49301234567",
            "+4915112345601",
            "+447700900125",
            "+493012345602",
            "+4915112345602",
            "+33639981235",
            "+4915112345603",
        ]
    );
    assert!(rejected.is_empty());

    // The same bytes under another name are sniffed as vCard and read the same way.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.txt");
    std::fs::copy(fixture("charsets-2.1.vcf"), &path).unwrap();
    assert_eq!(read_file(&path).unwrap(), contacts);
    assert_eq!(
        read_vcard_bytes(&std::fs::read(fixture("charsets-2.1.vcf")).unwrap()).unwrap(),
        contacts
    );
}

#[test]
fn vcard_4_with_uri_values() {
    let contacts = read_file(&fixture("v4.vcf")).unwrap();
    assert_eq!(
        names(&contacts),
        ["Émile Durand-Exemple", "Example Widgets, Inc."]
    );
    assert_eq!(
        numbers(&contacts[0]),
        ["tel:+33-6-39-98-12-34", "tel:+1-212-555-0101;ext=102"]
    );
    let (e164, _) = normalised_in_germany(&contacts);
    assert_eq!(e164, ["+33639981234", "+12125550101", "+12125550102"]);
}

#[test]
fn google_csv_with_quoted_commas_newlines_and_multi_number_cells() {
    let contacts = read_file(&fixture("google.csv")).unwrap();
    assert_eq!(
        names(&contacts),
        [
            "Anna Beispiel",
            "Muster, Ben",
            "Erfundene GmbH, Zentrale",
            "Nora Ohnenummer"
        ]
    );
    assert_eq!(
        numbers(&contacts[0]),
        ["+49 151 1234 5678", "0151 8765 4321", "+1 212 555 0100"]
    );
    assert_eq!(numbers(&contacts[1]), ["0151 2345 6789"]);
    assert_eq!(numbers(&contacts[2]), ["+49 30 1234567"]);
    assert!(contacts[3].numbers.is_empty());
}

#[test]
fn newer_google_csv_with_crlf() {
    let contacts = read_file(&fixture("google-2024.csv")).unwrap();
    assert_eq!(names(&contacts), ["Carla Fictional", "Dr. Tim Theo Tester"]);
    assert_eq!(
        numbers(&contacts[1]),
        ["0151 1234 5603", "0151 1234 5604", "+49 30 1234 5602"]
    );
}

#[test]
fn outlook_csv_with_bom_crlf_and_every_phone_column() {
    let contacts = read_file(&fixture("outlook.csv")).unwrap();
    assert_eq!(
        names(&contacts),
        ["Dana Sample", "Hugo Hypothetisch", "Erfundene GmbH"]
    );
    // Columns are read in file order: Mobile comes before Business in Outlook's export.
    assert_eq!(
        numbers(&contacts[0]),
        ["+1 (212) 555-0103", "+1 212 555 0104 x12"]
    );
    assert_eq!(
        numbers(&contacts[1]),
        [
            "030 1234 5603",
            "0151 1234 5606",
            "0151 1234 5605",
            "+49 30 1234 5604"
        ]
    );
    assert_eq!(numbers(&contacts[2]), ["+49 30 1234567"]);
    let (e164, rejected) = normalised_in_germany(&contacts);
    assert_eq!(e164.len(), 7);
    assert!(rejected.is_empty());
}

#[test]
fn format_is_chosen_by_extension_then_content() {
    // A .txt holding vCards is read as vCard.
    let contacts = read_file(&fixture("contacts.txt")).unwrap();
    assert_eq!(contacts.len(), 2);
    let error = read_file(&fixture("notes.txt")).unwrap_err();
    assert!(matches!(error, AddressBookError::UnknownFormat { .. }));
    assert!(error.to_string().contains("notes.txt"));
}

#[test]
fn a_csv_without_phone_columns_is_an_error() {
    let error = read_file(&fixture("no-phones.csv")).unwrap_err();
    assert!(matches!(error, AddressBookError::NoPhoneColumn));
    let message = error.to_string();
    assert!(message.contains("Phone N - Value") && message.contains("Mobile Phone"));
    assert!(!message.contains("Anna"));
}

#[test]
fn a_missing_file_names_the_file() {
    let error = read_file(&fixture("does-not-exist.vcf")).unwrap_err();
    assert!(matches!(error, AddressBookError::Io { .. }));
    assert!(error.to_string().contains("does-not-exist.vcf"));
}

#[test]
fn a_vcf_without_cards_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.vcf");
    std::fs::write(&path, "\r\n").unwrap();
    assert!(matches!(
        read_file(&path),
        Err(AddressBookError::NoContacts)
    ));
}

/// The numbers the example files hold, read in Germany. The README demo registers some of them:
/// keep this list and the demo in step.
const EXAMPLE_VCF_NUMBERS: &[&str] = &[
    "+4915112345601",
    "+493012345601",
    "+4915112345602",
    "+12125550101",
    "+447700900123",
    "+33639981234",
    "+61491570156",
    "+493012345602",
    "+4915112345603",
    "+12125550102",
    "+12125550103",
    "+493012345603",
    "+4915112345604",
    "+4915112345605",
    "+4915112345606",
];

/// See [`EXAMPLE_VCF_NUMBERS`].
const EXAMPLE_CSV_NUMBERS: &[&str] = &[
    "+4915112345601",
    "+493012345601",
    "+4915112345602",
    "+12125550101",
    "+447700900123",
    "+4915112345607",
    "+493012345604",
    "+4915112345608",
    "+493012345605",
];

#[test]
fn the_example_vcard() {
    let contacts = read_file(&example("contacts.vcf")).unwrap();
    assert_eq!(contacts.len(), 12);
    assert_eq!(contacts[5].name, "Praxis Dr. Erfunden");
    assert_eq!(contacts[11].name, "Karl Testperson");
    assert!(contacts[6].numbers.is_empty());
    // The folded TEL line is joined again.
    assert_eq!(numbers(&contacts[2]), ["+44 7700 900123"]);

    let book = normalise_book(&contacts, &Normaliser::new(Some("DE")).unwrap());
    let e164: Vec<String> = book.numbers().iter().map(ToString::to_string).collect();
    assert_eq!(e164, EXAMPLE_VCF_NUMBERS);
    // Ben's mobile is in his card and, written differently, in his office's.
    assert_eq!(book.owners(2), [1, 8]);
    let rejected: Vec<(usize, &str, NormaliseError)> = book
        .unparseable()
        .iter()
        .map(|r| (r.contact, r.raw.as_str(), r.error))
        .collect();
    assert_eq!(
        rejected,
        [(5, "call reception", NormaliseError::Unparseable)]
    );
}

#[test]
fn the_example_csv() {
    let contacts = read_file(&example("contacts.csv")).unwrap();
    assert_eq!(contacts.len(), 8);
    assert_eq!(contacts[1].name, "Muster, Ben");
    assert_eq!(contacts[5].name, "Beispiel AG, Empfang");
    assert!(contacts[7].numbers.is_empty());
    let (e164, rejected) = normalised_in_germany(&contacts);
    assert_eq!(e164, EXAMPLE_CSV_NUMBERS);
    assert_eq!(rejected, [(6, NormaliseError::Unparseable)]);
}

/// Every fixture and example, as bytes.
fn samples() -> Vec<Vec<u8>> {
    let mut samples = Vec::new();
    for dir in [
        fixture(""),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
    ] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("vcf" | "csv" | "txt")
            ) {
                samples.push(std::fs::read(path).unwrap());
            }
        }
    }
    samples.sort();
    samples
}

proptest! {
    /// Damaged exports (cut short, bytes overwritten) give contacts or an error, never a panic.
    #[test]
    fn readers_never_panic_on_damaged_files(
        pick in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let samples = samples();
        let mut bytes = pick.get(&samples).clone();
        bytes.truncate(cut.index(bytes.len() + 1));
        if !bytes.is_empty() {
            for (at, byte) in damage {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
        }
        let _ = read_csv(&bytes);
        let _ = read_vcard(&String::from_utf8_lossy(&bytes));
        let _ = read_vcard_bytes(&bytes);
    }

    /// Arbitrary bytes as either format: never a panic.
    #[test]
    fn readers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_csv(&bytes);
        let _ = read_vcard(&String::from_utf8_lossy(&bytes));
        let _ = read_vcard_bytes(&bytes);
    }
}
