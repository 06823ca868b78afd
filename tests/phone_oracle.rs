//! Our normaliser against libphonenumber's Python port (`phonenumbers`, pinned in
//! scripts/phone-oracle-requirements.txt) on every example number of every region and
//! non-geographic entity, in national, international, E.164, RFC 3966 and `00` forms.
//!
//! scripts/phone-oracle.sh makes the corpus with scripts/phone-oracle.py (in a venv under
//! target/) and then runs this test with `PHONE_ORACLE_CORPUS` naming it; scripts/test.sh runs
//! that script, so the comparison is part of the test command. Run alone, without the corpus,
//! the test is ignored.
//!
//! Each input is read as a user's address book entry is (`Normaliser::normalise`, with the
//! corpus's default region, or none). Where we and the oracle disagree, the disagreement must
//! be listed, with its reason, in tests/fixtures/phone-oracle-known.tsv; the test fails on any
//! disagreement that is not listed and on any listed one that no longer occurs, so the list
//! says exactly where we differ.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use contact_discovery::client::normalise::Normaliser;

/// One corpus row: how the input is written, where it is read, and what the oracle says.
struct Row {
    form: String,
    region: String,
    input: String,
    expected: String,
}

/// What we make of an input: the E.164 number, or `!` and why not.
fn ours(input: &str, region: &str) -> String {
    let region = (!region.is_empty()).then_some(region);
    match Normaliser::new(region) {
        Err(error) => format!("!region: {error}"),
        Ok(normaliser) => match normaliser.normalise(input) {
            Ok(number) => number.to_string(),
            Err(error) => format!("!{error}"),
        },
    }
}

/// The corpus's rows (tab-separated, `#` comments, one header line).
fn corpus(text: &str) -> Vec<Row> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 5, "corpus line: {line:?}");
            Row {
                form: fields[0].to_owned(),
                region: fields[1].to_owned(),
                input: fields[2].to_owned(),
                expected: fields[3].to_owned(),
            }
        })
        .collect()
}

/// The known disagreements: (input, region) → (ours, oracle). Columns: input, region, ours,
/// oracle, reason; `#` starts a comment line.
fn known(text: &str) -> BTreeMap<(String, String), (String, String)> {
    let mut known = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 5, "known disagreement line: {line:?}");
        assert!(
            !fields[4].trim().is_empty(),
            "a known disagreement needs its reason: {line:?}"
        );
        let key = (fields[0].to_owned(), fields[1].to_owned());
        let value = (fields[2].to_owned(), fields[3].to_owned());
        assert!(known.insert(key, value).is_none(), "listed twice: {line:?}");
    }
    known
}

#[test]
#[ignore = "needs the corpus: run scripts/phone-oracle.sh"]
fn the_normaliser_agrees_with_libphonenumber() {
    let corpus_path = std::env::var_os("PHONE_ORACLE_CORPUS")
        .expect("PHONE_ORACLE_CORPUS names the corpus (scripts/phone-oracle.sh sets it)");
    let text = std::fs::read_to_string(&corpus_path).expect("the corpus can be read");
    let rows = corpus(&text);
    assert!(rows.len() > 1000, "a corpus of only {} rows", rows.len());
    let known_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phone-oracle-known.tsv");
    let known = known(&std::fs::read_to_string(known_path).expect("the known list"));

    let mut unlisted = Vec::new();
    let mut changed = Vec::new();
    let mut seen = BTreeSet::new();
    let mut agree: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for row in &rows {
        let got = ours(&row.input, &row.region);
        let tally = agree.entry(row.form.as_str()).or_default();
        tally.1 += 1;
        let key = (row.input.clone(), row.region.clone());
        if got == row.expected {
            tally.0 += 1;
            continue;
        }
        let line = format!(
            "{}\t{}\t{got}\t{}\t({})",
            row.input, row.region, row.expected, row.form
        );
        match known.get(&key) {
            None => unlisted.push(line),
            Some((ours, oracle)) if *ours != got || *oracle != row.expected => changed.push(line),
            Some(_) => {
                seen.insert(key);
            }
        }
    }
    let stale: Vec<String> = known
        .keys()
        .filter(|key| !seen.contains(*key))
        .map(|(input, region)| format!("{input}\t{region}"))
        .collect();

    let total: usize = agree.values().map(|t| t.1).sum();
    let agreeing: usize = agree.values().map(|t| t.0).sum();
    eprintln!("agreement with the oracle: {agreeing} of {total}");
    for (form, (yes, all)) in &agree {
        eprintln!("  {form}: {yes} of {all}");
    }
    assert!(
        unlisted.is_empty() && changed.is_empty() && stale.is_empty(),
        "disagreements not in tests/fixtures/phone-oracle-known.tsv (input, region, ours, \
         oracle):\n{}\n\nlisted, but now with another answer:\n{}\n\nlisted, but no longer \
         disagreeing (remove them):\n{}",
        unlisted.join("\n"),
        changed.join("\n"),
        stale.join("\n"),
    );
}

#[test]
fn the_known_list_is_well_formed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phone-oracle-known.tsv");
    let _ = known(&std::fs::read_to_string(path).unwrap());
}
