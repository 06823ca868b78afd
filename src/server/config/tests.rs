use super::*;

fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

#[test]
fn defaults_are_valid() {
    Settings::try_from(Config::default()).unwrap();
    let loaded = Settings::load(&ServeArgs::default()).unwrap();
    assert_eq!(loaded.listeners.listen, Config::default().listeners.listen);
}

#[test]
fn flags_override_the_file_which_overrides_defaults() {
    let (_dir, file) = file_with("[epochs]\nepoch_seconds = 120\n[limits]\nmax_batch = 10\n");
    let mut args = ServeArgs {
        config: Some(file),
        ..ServeArgs::default()
    };
    args.limits.max_batch = NonZeroUsize::new(20);
    let c = Settings::load(&args).unwrap();
    assert_eq!(
        (c.epochs.length.secs().get(), c.limits.max_batch.get()),
        (120, 20)
    );
    assert_eq!(c.epochs.grace, Duration::from_secs(3_600));
}

#[test]
fn the_file_sets_every_section_in_the_flags_units() {
    let (_dir, file) = file_with(
        "data_dir = \"/srv/cd\"\n\
         [listeners]\nlisten = \"0.0.0.0:8081\"\n\
         [secrets]\nadmin_token = \"file-admin-token-0123456789\"\n\
         [auth]\nmax_credential_ttl_seconds = 600\n\
         [connections]\nheader_read_timeout_ms = 1500\nmax_connections_per_address = 0\n\
         [replication]\nregistry_redis_url = \"redis://:pw-in-url@127.0.0.1:6379/0\"\n",
    );
    let c = Settings::load(&ServeArgs {
        config: Some(file),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/srv/cd"));
    assert_eq!(c.listeners.listen.port(), 8081);
    let token = c.secrets.admin_token.as_ref().map(Token::expose);
    assert_eq!(token, Some("file-admin-token-0123456789"));
    assert_eq!(c.auth.max_credential_ttl, Duration::from_secs(600));
    assert_eq!(
        c.connections.header_read_timeout,
        Duration::from_millis(1_500)
    );
    assert_eq!(c.connections.max_connections_per_address, 0);
    assert!(c.replication.registry_redis_url.is_some());
}

#[test]
fn bad_settings_are_refused() {
    let (dir, file) = file_with("[epochs]\nepoch_secondz = 120\n");
    let args = ServeArgs {
        config: Some(file),
        ..ServeArgs::default()
    };
    assert!(Settings::load(&args).is_err());
    // The old flat layout is refused, not silently ignored.
    let (_flat, flat) = file_with("epoch_seconds = 120\n");
    let args = ServeArgs {
        config: Some(flat),
        ..ServeArgs::default()
    };
    assert!(Settings::load(&args).is_err());
    let mut args = ServeArgs::default();
    args.epochs.epoch_seconds = Some(59);
    let err = Settings::load(&args).unwrap_err().to_string();
    assert!(err.contains("epoch_seconds must be at least 60"), "{err}");
    let mut args = ServeArgs::default();
    args.limits.max_batch = NonZeroUsize::new(60_000);
    let err = Settings::load(&args).unwrap_err().to_string();
    assert!(
        err.contains("max_batch must not exceed rate_limit_burst"),
        "{err}"
    );
    let mut args = ServeArgs::default();
    args.connections.write_timeout_ms = Some(0);
    assert!(Settings::load(&args).is_err());
    let missing = ServeArgs {
        config: Some(dir.path().join("nope.toml")),
        ..ServeArgs::default()
    };
    assert!(Settings::load(&missing).is_err());
}

#[test]
fn malformed_secrets_are_refused_without_their_value() {
    let mut args = ServeArgs::default();
    args.secrets.admin_token = "short-admin".parse().ok();
    let err = Settings::load(&args).unwrap_err().to_string();
    assert!(err.contains("at least 16 characters"), "{err}");
    assert!(!err.contains("short-admin"), "{err}");
    let mut args = ServeArgs::default();
    args.secrets.server_secret = "not-hex-secret".parse().ok();
    let err = Settings::load(&args).unwrap_err().to_string();
    assert!(err.contains("64 hex characters"), "{err}");
    assert!(!err.contains("not-hex-secret"), "{err}");
    let mut args = ServeArgs::default();
    args.replication.rate_limit_redis_url = "http://:pw-in-url@host".parse().ok();
    let err = Settings::load(&args).unwrap_err().to_string();
    assert!(!err.contains("pw-in-url"), "{err}");
}

#[test]
fn debug_hides_secrets() {
    let mut args = ServeArgs::default();
    args.secrets.admin_token = "super-secret-admin-token".parse().ok();
    args.secrets.metrics_token = "super-secret-metrics-token".parse().ok();
    args.secrets.server_secret = "ab".repeat(32).parse().ok();
    args.replication.registry_redis_url = "redis://:super-secret-pw@127.0.0.1/0".parse().ok();
    args.replication.rate_limit_redis_url = "redis://:super-secret-pw@127.0.0.1/1".parse().ok();
    let settings = Settings::load(&args).unwrap();
    for shown in [
        format!("{settings:?}"),
        format!("{settings}"),
        format!("{args:?}"),
    ] {
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(!shown.contains("abab"), "{shown}");
    }
}
