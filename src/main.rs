//! Command line of contact-discovery: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use contact_discovery::commands;
use contact_discovery::protocol::Format;
use contact_discovery::server::config::{DEFAULT_DATA_DIR, ServeArgs};

mod wipe_alloc;

/// Every freed heap block is wiped first, so request bytes that hyper's buffers held do not
/// outlive the connection in freed memory (see `wipe_alloc.rs`).
#[global_allocator]
static ALLOCATOR: wipe_alloc::WipeOnFree = wipe_alloc::WipeOnFree;

#[derive(Parser)]
#[command(
    name = "contact-discovery",
    version,
    about = "Private contact discovery service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the discovery service.
    Serve(Box<ServeArgs>),
    /// Manage the registry of registered numbers (stop the server first).
    Registry {
        #[command(subcommand)]
        action: RegistryAction,
    },
    /// Mint a caller credential with the shared credential key.
    Credential {
        /// Account id (1-64 of A-Z a-z 0-9 - _).
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Data directory holding credential.key.
        #[arg(long, env = "CONTACT_DISCOVERY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Credential key file (overrides DATA_DIR/credential.key).
        #[arg(long, env = "CONTACT_DISCOVERY_CREDENTIAL_KEY_FILE")]
        credential_key_file: Option<PathBuf>,
    },
    /// Exit 0 if the service answers 200 at URL (a container health check without curl).
    Healthcheck {
        /// What to ask.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Measure fingerprint speed here and print what an attacker's reversal and enumeration cost.
    Audit {
        /// Seconds to measure each of the one-core and all-core speeds.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Rate limit burst to assume (the server's --rate-limit-burst).
        #[arg(
            long,
            env = "CONTACT_DISCOVERY_RATE_LIMIT_BURST",
            default_value_t = 50_000
        )]
        rate_limit_burst: u64,
        /// Refill per day to assume (the server's --rate-limit-refill-per-day).
        #[arg(
            long,
            env = "CONTACT_DISCOVERY_RATE_LIMIT_REFILL_PER_DAY",
            default_value_t = 2_000
        )]
        rate_limit_refill_per_day: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Open-loop load test of a running service (see docs/BENCHMARKS.md).
    Loadgen(Box<contact_discovery::tools::loadgen::LoadgenArgs>),
    /// Read an address book (vCard or CSV) and show which contacts are registered.
    Discover {
        /// Server base URL.
        #[arg(
            long,
            env = "CONTACT_DISCOVERY_SERVER",
            default_value = "http://127.0.0.1:8080"
        )]
        server: String,
        /// Credential from the messaging backend (see `credential`).
        #[arg(long, env = "CONTACT_DISCOVERY_CREDENTIAL", hide_env_values = true)]
        credential: Option<String>,
        /// Address book: a vCard (.vcf) or CSV export (Google, Outlook, Thunderbird, or a sheet
        /// with a Phone/Mobile/Telephone column).
        #[arg(long)]
        contacts: PathBuf,
        /// A CSV column that holds phone numbers, besides the known ones (any case; repeatable).
        #[arg(long = "phone-column", value_name = "NAME")]
        phone_columns: Vec<String>,
        /// Region for numbers written in national form, e.g. DE or US [default: the locale's,
        /// from LC_ALL, LC_TELEPHONE or LANG, e.g. de_DE.UTF-8 → DE].
        #[arg(long)]
        region: Option<String>,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
        /// Request encoding.
        #[arg(long, value_enum, default_value = "binary")]
        encoding: Format,
        /// Timeout per request, e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// hashed: upload salted fingerprints; private: upload only blinded elements and match
        /// against the registered set, downloaded.
        #[arg(long, value_enum, default_value = "hashed")]
        mode: commands::DiscoverMode,
        /// Private mode: keep the set and the contacts' set hashes in FILE (0600), so the next
        /// run evaluates only new contacts and downloads only changes.
        #[arg(long, value_name = "FILE")]
        cache: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RegistryAction {
    /// Import one E.164 per line ('+E164' or '+E164 hidden'); all or nothing by default.
    Import {
        /// File to read, or - for standard input.
        file: PathBuf,
        /// Import the valid lines even if some are invalid.
        #[arg(long)]
        skip_invalid: bool,
        /// Data directory.
        #[arg(long, env = "CONTACT_DISCOVERY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Print every registration, one per line.
    Export {
        /// Data directory.
        #[arg(long, env = "CONTACT_DISCOVERY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Print synthetic numbers with a realistic country mix (pipe into `registry import -`).
    Generate {
        /// How many distinct numbers.
        #[arg(long)]
        count: usize,
        /// Seed; the same seed gives the same numbers.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    #[cfg(feature = "test-hooks")]
    if wipe_alloc::apply_test_switch() {
        eprintln!(
            "WARNING: test build with CONTACT_DISCOVERY_NO_WIPE_ON_FREE=1: freed memory is not wiped"
        );
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => commands::serve(&args),
        Command::Registry { action } => match action {
            RegistryAction::Import {
                file,
                skip_invalid,
                data_dir,
            } => commands::registry_import(&data_dir, &file, skip_invalid).map(|_| ()),
            RegistryAction::Export { data_dir } => {
                commands::registry_export(&data_dir, &mut std::io::stdout())
            }
            RegistryAction::Generate { count, seed } => {
                commands::registry_generate(count, seed, &mut std::io::stdout())
            }
        },
        Command::Discover {
            server,
            credential,
            contacts,
            phone_columns,
            region,
            json,
            encoding,
            timeout,
            mode,
            cache,
        } => commands::discover_and_print(&commands::DiscoverArgs {
            server,
            credential,
            contacts,
            region,
            phone_columns,
            format: encoding,
            json,
            timeout,
            mode,
            cache,
        }),
        Command::Audit {
            seconds,
            rate_limit_burst,
            rate_limit_refill_per_day,
            json,
        } => commands::audit(seconds, rate_limit_burst, rate_limit_refill_per_day, json),
        Command::Loadgen(args) => commands::loadgen(&args),
        Command::Healthcheck { url, timeout } => commands::healthcheck(&url, timeout),
        Command::Credential {
            user,
            ttl,
            data_dir,
            credential_key_file,
        } => commands::credential(&data_dir, credential_key_file, &user, ttl)
            .map(|token| println!("{token}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
