//! What `discover` prints: which contacts are reachable, what could not be read, and a summary.

use std::fmt::Write as _;

use serde::Serialize;

use super::addressbook::Contact;
use super::normalise::NormalisedBook;

/// One number of one contact, as reported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum NumberReport {
    /// Normalised and looked up.
    Looked {
        /// The number in E.164.
        e164: String,
        /// Whether it belongs to a registered user.
        registered: bool,
    },
    /// Could not be normalised.
    Unparseable {
        /// As written in the address book.
        raw: String,
        /// Why not.
        error: String,
    },
}

/// One contact, as reported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContactReport {
    /// Display name.
    pub name: String,
    /// True if any of its numbers is registered.
    pub reachable: bool,
    /// Its numbers.
    pub numbers: Vec<NumberReport>,
}

/// Totals of a run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Contacts read from the file.
    pub contacts: usize,
    /// Number entries in the file (before deduplication).
    pub numbers: usize,
    /// Distinct E.164 numbers looked up.
    pub unique_numbers: usize,
    /// Entries that could not be normalised.
    pub unparseable: usize,
    /// Distinct numbers that belong to registered users.
    pub registered: usize,
    /// Contacts with at least one registered number.
    pub reachable_contacts: usize,
}

/// The whole answer of a `discover` run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiscoveryReport {
    /// Every contact with its numbers.
    pub contacts: Vec<ContactReport>,
    /// Totals.
    pub summary: Summary,
}

impl DiscoveryReport {
    /// Joins the contacts, their normalised book and the server's answers (`registered[i]`
    /// answers `book.numbers()[i]`).
    pub fn new(contacts: &[Contact], book: &NormalisedBook, registered: &[bool]) -> Self {
        let mut reports: Vec<ContactReport> = contacts
            .iter()
            .map(|c| ContactReport {
                name: c.name.clone(),
                reachable: false,
                numbers: Vec::new(),
            })
            .collect();
        for (i, number) in book.numbers().iter().enumerate() {
            let hit = registered.get(i).copied().unwrap_or(false);
            for &owner in book.owners(i) {
                if let Some(report) = reports.get_mut(owner) {
                    report.reachable |= hit;
                    report.numbers.push(NumberReport::Looked {
                        e164: number.to_string(),
                        registered: hit,
                    });
                }
            }
        }
        for rejected in book.unparseable() {
            if let Some(report) = reports.get_mut(rejected.contact) {
                report.numbers.push(NumberReport::Unparseable {
                    raw: rejected.raw.clone(),
                    error: rejected.error.to_string(),
                });
            }
        }
        let summary = Summary {
            contacts: contacts.len(),
            numbers: contacts.iter().map(|c| c.numbers.len()).sum(),
            unique_numbers: book.numbers().len(),
            unparseable: book.unparseable().len(),
            registered: registered.iter().filter(|r| **r).count(),
            reachable_contacts: reports.iter().filter(|r| r.reachable).count(),
        };
        Self {
            contacts: reports,
            summary,
        }
    }

    /// The human-readable report.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let s = &self.summary;
        let _ = writeln!(
            out,
            "Reachable contacts ({} of {}):",
            s.reachable_contacts, s.contacts
        );
        for contact in self.contacts.iter().filter(|c| c.reachable) {
            let numbers: Vec<&str> = contact
                .numbers
                .iter()
                .filter_map(|n| match n {
                    NumberReport::Looked {
                        e164,
                        registered: true,
                    } => Some(e164.as_str()),
                    _ => None,
                })
                .collect();
            let _ = writeln!(out, "  {:<32} {}", contact.name, numbers.join(", "));
        }
        if s.unparseable > 0 {
            let _ = writeln!(out, "Could not read ({}):", s.unparseable);
            for contact in &self.contacts {
                for number in &contact.numbers {
                    if let NumberReport::Unparseable { raw, error } = number {
                        let _ = writeln!(out, "  {:<32} {:?}: {}", contact.name, raw, error);
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "{} contacts read, {} numbers ({} unique), {} unparseable, {} registered",
            s.contacts, s.numbers, s.unique_numbers, s.unparseable, s.registered
        );
        out
    }
}
