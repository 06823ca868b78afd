//! `serve --demo`: a synthetic registry on first start and a request to paste.

use std::path::Path;

use crate::client::addressbook::{read_csv, read_vcard};
use crate::client::normalise::{Normaliser, normalise_book};
use crate::domain::{E164, Fingerprint, UserId};
use crate::protocol::{Format, encode_request};
use crate::server::config::Settings;
use crate::server::startup::{Application, load_keys};
use crate::store::registry::{Registry, RegistryError, Visibility};
use crate::tools::generate;

/// Numbers the demo registry holds.
pub const DEMO_REGISTRATIONS: usize = 100_000;
/// Seed of the demo registry.
pub const DEMO_SEED: u64 = 1;

/// The example address books shipped in `examples/`, built into the binary.
const EXAMPLE_VCF: &str = include_str!("../../examples/contacts.vcf");
const EXAMPLE_CSV: &str = include_str!("../../examples/contacts.csv");

/// The numbers of the example address books (read with region DE), each once, in file order.
pub fn example_numbers() -> Vec<E164> {
    let mut contacts = read_vcard(EXAMPLE_VCF).unwrap_or_default();
    contacts.extend(read_csv(EXAMPLE_CSV.as_bytes()).unwrap_or_default());
    match Normaliser::new(Some("DE")) {
        Ok(normaliser) => normalise_book(&contacts, &normaliser).numbers().to_vec(),
        Err(_) => Vec::new(),
    }
}

/// The example numbers the demo registers: every other one, so a run shows both outcomes.
pub fn registered_example_numbers() -> Vec<E164> {
    example_numbers().into_iter().step_by(2).collect()
}

/// Seeds the registry with synthetic numbers, plus every other number of the example address
/// books, if it is empty.
pub fn seed_if_empty(data_dir: &Path) -> Result<(), RegistryError> {
    let (registry, _) = Registry::open(data_dir)?;
    let counts = registry.counts();
    if counts.discoverable + counts.hidden > 0 {
        return Ok(());
    }
    let entries: Vec<_> = generate::numbers(DEMO_REGISTRATIONS, DEMO_SEED)
        .into_iter()
        .chain(registered_example_numbers())
        .map(|n| (n, Visibility::Discoverable))
        .collect();
    registry.import(&entries)?;
    crate::safe_info!("demo: seeded a synthetic registry", count = entries.len());
    Ok(())
}

/// Prints a credential and a `curl` request mixing registered and unregistered numbers.
pub fn print_instructions(settings: &Settings, app: &Application) {
    let state = app.state();
    let now = state.public.clock.now_secs();
    let epoch = state.public.indexes.policy().schedule.epoch_at(now);
    let salt = state.public.secret.salt(epoch);
    let (registered, _) = state.admin.registry.discoverable();
    let mut numbers: Vec<E164> = registered.into_iter().take(3).collect();
    // Two numbers from the reserved fictional ranges, never registered by the demo.
    numbers.extend(
        ["+15555550100", "+447700900999"]
            .iter()
            .filter_map(|t| E164::parse(t).ok()),
    );
    let fingerprints: Vec<Fingerprint> = numbers
        .iter()
        .map(|n| Fingerprint::compute(&salt, *n))
        .collect();
    let body =
        String::from_utf8(encode_request(Format::Json, epoch.0, &fingerprints)).unwrap_or_default();
    let token = match (
        settings.auth.insecure_no_auth,
        load_keys(settings),
        UserId::parse("demo-user"),
    ) {
        (false, Ok(keys), Ok(user)) => Some(keys.credential_key.mint(&user, now + 86_400)),
        _ => None,
    };
    let auth = token
        .as_ref()
        .map(|t| format!(" -H 'Authorization: Bearer {t}'"))
        .unwrap_or_default();
    let list: Vec<String> = numbers.iter().map(ToString::to_string).collect();
    println!();
    println!(
        "contact-discovery demo is ready: {} registered numbers.",
        DEMO_REGISTRATIONS
    );
    println!(
        "Numbers in this request (first three registered): {}",
        list.join(" ")
    );
    println!("Paste this to ask which are registered (expect \"registered\":[0,1,2]):");
    println!();
    println!(
        "curl -s http://{}/v1/discover -H 'Content-Type: application/json'{auth} -d '{body}'",
        app.public_addr()
    );
    println!();
    println!("Or discover the example address book (some of its contacts are registered):");
    println!();
    let credential = token
        .map(|t| format!(" --credential {t}"))
        .unwrap_or_default();
    println!(
        "cargo run --release -- discover --server http://{} --region DE --contacts examples/contacts.vcf{credential}",
        app.public_addr(),
    );
    println!();
    println!(
        "The same in the private mode (only blinded elements leave; the registered set is \
         downloaded, then kept current through the cache file):"
    );
    println!();
    println!(
        "cargo run --release -- discover --mode private --cache contacts.cache --server http://{} --region DE --contacts examples/contacts.vcf{credential}",
        app.public_addr(),
    );
    println!();
}
