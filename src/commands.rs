//! What each command-line command does. `main.rs` only parses arguments and calls these.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::domain::secret::{self, KeyFileError};
use crate::domain::{CredentialKey, E164, UserId};
use crate::server::config::{ServeArgs, Settings, default_credential_key_path};
use crate::server::startup::{Application, StartupError, shutdown_signal};
use crate::store::registry::{Registry, RegistryError, Visibility};
use crate::tools::generate;

/// A command failed; the message is for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The service failed to start.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::server::config::ConfigError),
    /// Registry problem.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Key problem.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// Reading or writing a file or stream failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The input was refused; details were printed.
    #[error("{0}")]
    Refused(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CommandError {
    let what = what.into();
    move |source| CommandError::Io { what, source }
}

/// Sets up logging to stderr with `filter` unless `RUST_LOG` is set.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// `serve`: runs the service until SIGTERM or Ctrl-C.
pub fn serve(args: &ServeArgs) -> Result<(), CommandError> {
    let settings = Settings::load(args)?;
    init_logging(&settings.log);
    crate::server::hardening::install_redacting_panic_hook();
    if let Err(err) = crate::server::hardening::disable_core_dumps() {
        crate::safe_warn!("could not disable core dumps", error = err);
    }
    crate::safe_info!("starting", config = settings);
    if settings.mlock {
        // Asked for explicitly: running without it would silently break the promise.
        crate::server::hardening::lock_memory().map_err(io(
            "--mlock: cannot lock memory (needs CAP_IPC_LOCK or a higher RLIMIT_MEMLOCK)",
        ))?;
        crate::safe_info!("memory locked: nothing of this process is swapped out");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    runtime.block_on(async move {
        if settings.demo {
            crate::tools::demo::seed_if_empty(&settings.data_dir)?;
        }
        let app = Application::build(&settings).await?;
        if settings.demo {
            // The printed private-mode command works at once (100,000 numbers: a few seconds).
            app.warm_up_all().await;
        } else {
            app.warm_up().await;
        }
        crate::safe_info!(
            "listening",
            public = app.public_addr(),
            admin = app.admin_addr()
        );
        if settings.demo {
            crate::tools::demo::print_instructions(&settings, &app);
        }
        app.run_until_stopped(shutdown_signal())
            .await
            .map_err(io("serving"))
    })
}

/// `registry import`: adds one E.164 per line (optionally followed by `hidden`); all or nothing
/// unless `skip_invalid`. Returns how many were imported.
pub fn registry_import(
    data_dir: &Path,
    file: &Path,
    skip_invalid: bool,
) -> Result<usize, CommandError> {
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).map_err(io(format!("opening {}", file.display())))?,
        ))
    };
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io(format!("reading {}", file.display())))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let number = fields.next().map(E164::parse);
        let visibility = match fields.next() {
            None => Some(Visibility::Discoverable),
            Some("hidden") => Some(Visibility::Hidden),
            Some(_) => None,
        };
        match (number, visibility, fields.next()) {
            (Some(Ok(n)), Some(v), None) => entries.push((n, v)),
            (Some(Err(why)), _, _) => bad.push((i + 1, why.to_string())),
            _ => bad.push((i + 1, "expected '+E164' or '+E164 hidden'".to_owned())),
        }
    }
    for (line, why) in bad.iter().take(50) {
        eprintln!("{}:{line}: {why}", file.display());
    }
    if bad.len() > 50 {
        eprintln!("... and {} more invalid lines", bad.len() - 50);
    }
    if !bad.is_empty() && !skip_invalid {
        return Err(CommandError::Refused(format!(
            "{} invalid lines; nothing imported (use --skip-invalid to import the rest)",
            bad.len()
        )));
    }
    let (registry, _) = Registry::open(data_dir)?;
    registry.import(&entries)?;
    let counts = registry.counts();
    eprintln!(
        "imported {} numbers ({} invalid lines skipped); registry now holds {} discoverable and {} hidden",
        entries.len(),
        bad.len(),
        counts.discoverable,
        counts.hidden
    );
    Ok(entries.len())
}

/// `registry export`: every registration, one per line, `hidden` marked.
pub fn registry_export(data_dir: &Path, out: &mut dyn Write) -> Result<(), CommandError> {
    let (registry, _) = Registry::open(data_dir)?;
    let mut out = BufWriter::new(out);
    for (number, visibility) in registry.entries() {
        match visibility {
            Visibility::Discoverable => writeln!(out, "{number}"),
            Visibility::Hidden => writeln!(out, "{number} hidden"),
        }
        .map_err(io("writing the export"))?;
    }
    out.flush().map_err(io("writing the export"))
}

/// `registry generate`: synthetic numbers, one per line.
pub fn registry_generate(count: usize, seed: u64, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut out = BufWriter::new(out);
    for number in generate::numbers(count, seed) {
        writeln!(out, "{number}").map_err(io("writing numbers"))?;
    }
    out.flush().map_err(io("writing numbers"))
}

/// `credential`: mints a credential for `user` valid for `ttl`.
pub fn credential(
    data_dir: &Path,
    key_file: Option<PathBuf>,
    user: &str,
    ttl: std::time::Duration,
) -> Result<String, CommandError> {
    let user = UserId::parse(user).map_err(|e| CommandError::Refused(e.to_string()))?;
    let key = match key_file {
        Some(path) => secret::read_key(&path)?,
        None => {
            secret::ensure_private_dir(data_dir)?;
            secret::read_or_create_key(&default_credential_key_path(data_dir))?.0
        }
    };
    let now = crate::clock::Clock::System.now_secs();
    Ok(CredentialKey::from_bytes(key).mint(&user, now + ttl.as_secs().max(1)))
}

/// Settings of a `discover` run.
#[derive(Debug, Clone)]
pub struct DiscoverArgs {
    /// Server base URL.
    pub server: String,
    /// Bearer credential.
    pub credential: Option<String>,
    /// Address book file (vCard or CSV).
    pub contacts: PathBuf,
    /// Region for national-format numbers, e.g. `DE`.
    pub region: Option<String>,
    /// Further CSV columns holding phone numbers (`--phone-column`).
    pub phone_columns: Vec<String>,
    /// Request encoding.
    pub format: crate::protocol::Format,
    /// Print JSON instead of text.
    pub json: bool,
    /// Per-request timeout.
    pub timeout: std::time::Duration,
    /// Hashed (salted fingerprints) or private (OPRF and a downloaded set).
    pub mode: DiscoverMode,
    /// The private mode's cache file (`--cache`): the set and the numbers' set hashes.
    pub cache: Option<PathBuf>,
}

/// How `discover` asks the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoverMode {
    /// Upload salted fingerprints of the numbers (`POST /v1/discover`).
    Hashed,
    /// Upload nothing about a number: blinded OPRF elements, matched against the registered
    /// set, downloaded (`/v1/private/...`).
    Private,
}

/// `discover`: reads an address book, asks the server which contacts are registered, and
/// returns the report (printing is the caller's job).
pub async fn discover(
    args: &DiscoverArgs,
) -> Result<crate::client::report::DiscoveryReport, CommandError> {
    use crate::client::addressbook::read_file_with_phone_columns;
    use crate::client::normalise::normalise_book;
    use crate::client::report::DiscoveryReport;
    use crate::client::{Client, ClientConfig};

    let contacts = read_file_with_phone_columns(&args.contacts, &args.phone_columns)
        .map_err(|e| CommandError::Refused(e.to_string()))?;
    // A charset the reader does not know cost the card its name's letters, not its numbers:
    // said per card (its place in the file, never its data), and the run goes on.
    for (index, contact) in contacts.iter().enumerate() {
        for label in &contact.unknown_charsets {
            eprintln!(
                "warning: contact {} in {}: unknown character set {label:?}, read as UTF-8 \
                 (its name may show \u{FFFD}; its numbers are read as written)",
                index + 1,
                args.contacts.display()
            );
        }
    }
    let normaliser = normaliser_for(args.region.as_deref())?;
    let book = normalise_book(&contacts, &normaliser);
    let mut config = ClientConfig::new(args.server.clone(), args.credential.clone());
    config.format = args.format;
    config.timeout = args.timeout;
    let client = Client::new(config).map_err(|e| CommandError::Refused(e.to_string()))?;
    let registered = match args.mode {
        DiscoverMode::Hashed => {
            if args.cache.is_some() {
                return Err(CommandError::Refused(
                    "--cache is for --mode private (the hashed mode keeps nothing)".to_owned(),
                ));
            }
            client
                .discover(book.numbers())
                .await
                .map_err(|e| CommandError::Refused(e.to_string()))?
                .0
        }
        DiscoverMode::Private => {
            discover_private(&client, book.numbers(), args.cache.as_deref()).await?
        }
    };
    Ok(DiscoveryReport::new(&contacts, &book, &registered))
}

/// The private mode of `discover`: loads the cache file if given (a damaged or unreadable one
/// is reported and replaced, never fatal: it only saves work), runs, says on stderr what was
/// evaluated and downloaded, and writes the cache back.
async fn discover_private(
    client: &crate::client::Client,
    numbers: &[E164],
    cache_path: Option<&Path>,
) -> Result<Vec<bool>, CommandError> {
    use crate::client::private::{PrivateCache, read_cache, write_cache};

    let mut cache = match cache_path.map(read_cache) {
        None | Some(Ok(None)) => PrivateCache::default(),
        Some(Ok(Some(cache))) => cache,
        Some(Err(err)) => {
            if let Some(path) = cache_path {
                eprintln!(
                    "warning: cache {} refused ({err}); starting afresh",
                    path.display()
                );
            }
            PrivateCache::default()
        }
    };
    let outcome = client
        .discover_private(numbers, &mut cache)
        .await
        .map_err(|e| CommandError::Refused(e.to_string()))?;
    let s = &outcome.stats;
    eprintln!(
        "private mode (key epoch {}): evaluated={} from_cache={} downloaded_bytes={} manifest_bytes={} shard_bytes={} delta_bytes={} shards_downloaded={} shards_from_delta={} manifest_not_modified={}",
        outcome.key_epoch,
        s.evaluated,
        s.from_cache,
        s.sync.total_bytes(),
        s.sync.manifest_bytes,
        s.sync.shard_bytes,
        s.sync.delta_bytes,
        s.sync.shards_downloaded,
        s.sync.shards_from_delta,
        s.sync.manifests_not_modified,
    );
    if let Some(path) = cache_path {
        // The answer stands without the cache; a cache that cannot be written costs the next
        // run a full download, which the user is told about.
        if let Err(err) = write_cache(path, &cache) {
            eprintln!(
                "warning: could not write the cache {}: {err}",
                path.display()
            );
        }
    }
    Ok(outcome.registered)
}

/// The normaliser `discover` reads national numbers with: `--region` if given, else the
/// locale's region (as phones do), else international forms only. Says on stderr which region
/// it uses and where it came from; a locale region the metadata does not know is ignored with
/// a warning rather than refused (the user did not ask for it).
fn normaliser_for(
    region: Option<&str>,
) -> Result<crate::client::normalise::Normaliser, CommandError> {
    use crate::client::normalise::{Normaliser, region_from_locale};
    if let Some(region) = region {
        let normaliser = Normaliser::new(Some(region))
            .map_err(|e| CommandError::Refused(format!("--region: {e}")))?;
        eprintln!(
            "national numbers read as {} (--region)",
            region.to_ascii_uppercase()
        );
        return Ok(normaliser);
    }
    if let Some((code, from)) = region_from_locale(|name| std::env::var(name).ok()) {
        match Normaliser::new(Some(&code)) {
            Ok(normaliser) => {
                eprintln!("national numbers read as {code} (from {from}; --region overrides)");
                return Ok(normaliser);
            }
            Err(e) => eprintln!("warning: the locale's region {code} (from {from}): {e}"),
        }
    }
    eprintln!(
        "no region (--region or a locale such as LANG=de_DE.UTF-8): national numbers are unreadable"
    );
    Normaliser::new(None).map_err(|e| CommandError::Refused(e.to_string()))
}

/// `discover` from the command line: runs it on a fresh runtime and prints text or JSON.
pub fn discover_and_print(args: &DiscoverArgs) -> Result<(), CommandError> {
    let report = block_on(discover(args))??;
    print_report(args.json, &report, || report.render_text())
}

/// Prints `report` as pretty JSON, or as the text `render` makes.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    render: impl FnOnce() -> String,
) -> Result<(), CommandError> {
    if json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| CommandError::Refused(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", render());
    }
    Ok(())
}

/// `audit`: measures fingerprint speed here and prints reversal and enumeration costs.
pub fn audit(
    seconds: f64,
    burst: u64,
    refill_per_day: u64,
    json: bool,
) -> Result<(), CommandError> {
    let report = crate::tools::audit::run(seconds, burst, refill_per_day);
    print_report(json, &report, || report.render_text())
}

/// `loadgen`: open-loop load against a running service; prints the report.
pub fn loadgen(args: &crate::tools::loadgen::LoadgenArgs) -> Result<(), CommandError> {
    crate::tools::loadgen::run_and_print(args).map_err(|e| CommandError::Refused(e.to_string()))
}

/// `healthcheck`: exits 0 if `url` answers 200 within `timeout`, else fails. For a container
/// `HEALTHCHECK` in an image that has no shell or curl (distroless).
pub fn healthcheck(url: &str, timeout: std::time::Duration) -> Result<(), CommandError> {
    let status = block_on(async {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CommandError::Refused(e.to_string()))?;
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| CommandError::Refused(format!("{url}: {e}")))?;
        Ok::<_, CommandError>(response.status())
    })??;
    if status.is_success() {
        Ok(())
    } else {
        Err(CommandError::Refused(format!("{url}: {status}")))
    }
}

/// Runs `future` to completion on a fresh single-threaded runtime (the one-shot client commands).
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, CommandError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    Ok(runtime.block_on(future))
}
