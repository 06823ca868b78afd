//! Replays the fuzz seed corpus (`fuzz/corpus/<target>/`) through the same decoders and checks
//! as the fuzz targets, on stable in every test run: the corpus stays meaningful, and any
//! crashing input saved there as a regression case is re-checked without cargo-fuzz.

use std::path::Path;

use contact_discovery::client::addressbook::{read_csv, read_vcard, read_vcard_bytes};
use contact_discovery::client::normalise::Normaliser;
use contact_discovery::domain::{CredentialKey, E164};
use contact_discovery::protocol::gcs::{self, Limits, ShardIndex};
use contact_discovery::protocol::{self, Format};
use contact_discovery::store::registry::Registry;
use contact_discovery::store::registry::record::{decode_record, encode_record};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(!inputs.is_empty(), "empty corpus for {target}");
    inputs.sort();
    inputs
}

#[test]
fn discovery_bodies() {
    let mut accepted = 0;
    for data in corpus("discover_binary") {
        if let Ok(request) = protocol::decode_request(Format::Binary, &data, 512) {
            let again =
                protocol::encode_request(Format::Binary, request.epoch, &request.fingerprints);
            assert_eq!(again, data);
            accepted += 1;
        }
    }
    for data in corpus("discover_json") {
        if let Ok(request) = protocol::decode_request(Format::Json, &data, 512) {
            let encoded =
                protocol::encode_request(Format::Json, request.epoch, &request.fingerprints);
            let again = protocol::decode_request(Format::Json, &encoded, 512).unwrap();
            assert_eq!(*again.fingerprints, *request.fingerprints);
            accepted += 1;
        }
    }
    assert!(accepted >= 2, "the protocol vectors decode");
}

#[test]
fn private_bodies() {
    use contact_discovery::protocol::evaluate::{decode_evaluate, encode_evaluate};
    use contact_discovery::protocol::private_set::{SetParams, decode_delta, encode_delta};
    let mut accepted = 0;
    for data in corpus("private_evaluate") {
        if let Ok(request) = decode_evaluate(Format::Binary, &data, 64) {
            assert_eq!(
                encode_evaluate(Format::Binary, request.key_epoch, &request.elements),
                data
            );
            accepted += 1;
        }
        if let Ok(request) = decode_evaluate(Format::Json, &data, 64) {
            let encoded = encode_evaluate(Format::Json, request.key_epoch, &request.elements);
            assert!(decode_evaluate(Format::Json, &encoded, 64).is_ok());
            accepted += 1;
        }
    }
    for data in corpus("private_delta") {
        let (first, body) = data.split_first().unwrap();
        let params = SetParams {
            key_epoch: 0,
            range: 1u64 << (16 + (first >> 2) % 40),
            shards: u32::from(first & 3) + 1,
            golomb_p: 12,
        };
        if let Ok(delta) = decode_delta(&params, body, 1 << 12) {
            let again = encode_delta(&params, &delta).unwrap();
            assert_eq!(decode_delta(&params, &again, 1 << 12), Ok(delta));
            accepted += 1;
        }
    }
    assert!(accepted >= 4, "the seeds decode");
}

#[test]
fn gcs_shards() {
    // As fuzz/fuzz_targets/gcs_decode.rs: the first byte chooses P and the limit.
    let mut accepted = 0;
    for data in corpus("gcs_decode") {
        let Some((&first, shard)) = data.split_first() else {
            continue;
        };
        let p = first & 0x3f;
        let limit = if first & 0x80 != 0 {
            u64::MAX
        } else {
            1u64 << (u32::from(p) + 8).min(63)
        };
        let limits = Limits {
            max_items: 1 << 16,
            limit,
        };
        let decoded = gcs::decode(shard, p, limits);
        let streamed: Result<Vec<u64>, _> = gcs::values(shard, p, limits).and_then(|v| v.collect());
        assert_eq!(decoded, streamed);
        let index = ShardIndex::new(shard.to_vec(), p, limits);
        match decoded {
            Ok(values) => {
                assert_eq!(gcs::encode(&values, p).as_deref(), Ok(shard));
                let index = index.unwrap();
                assert!(values.iter().all(|&v| index.contains(v)));
                accepted += 1;
            }
            Err(error) => assert_eq!(index.err(), Some(error)),
        }
    }
    assert!(accepted >= 8, "the valid seeds decode");
}

#[test]
fn credentials_and_numbers() {
    let key = CredentialKey::from_bytes([0x42; 32]);
    for data in corpus("credential") {
        if let Ok(text) = std::str::from_utf8(&data)
            && let Ok(c) = key.verify(text, 1_790_000_000 - 60, 7 * 86_400)
        {
            assert_eq!(key.mint(&c.user, c.expiry), text);
        }
    }
    for data in corpus("e164") {
        if let Ok(number) = std::str::from_utf8(&data)
            .map(E164::parse)
            .unwrap_or(Err(contact_discovery::domain::E164Error::Empty))
        {
            assert_eq!(number.to_string().as_bytes(), data.as_slice());
        }
    }
    let normaliser = Normaliser::new(Some("DE")).unwrap();
    for data in corpus("normalise") {
        if let Ok(number) = normaliser.normalise(&String::from_utf8_lossy(&data)) {
            assert_eq!(E164::parse(&number.to_string()), Ok(number));
        }
    }
}

#[test]
fn registry_files() {
    for data in corpus("registry_record") {
        if let Ok((ops, used)) = decode_record(&data) {
            assert_eq!(encode_record(&ops), &data[..used]);
        }
    }
    for data in corpus("registry_open") {
        let Some((&mode, rest)) = data.split_first() else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, log) = match mode % 3 {
            0 => (None, Some(rest)),
            1 => (Some(rest), None),
            _ => {
                let at = rest.first().map_or(0, |&b| usize::from(b)).min(rest.len());
                (Some(&rest[..at]), Some(&rest[at..]))
            }
        };
        if let Some(bytes) = snapshot {
            std::fs::write(dir.path().join("registry.snap"), bytes).unwrap();
        }
        if let Some(bytes) = log {
            std::fs::write(dir.path().join("registry.log"), bytes).unwrap();
        }
        let Ok((registry, _)) = Registry::open(dir.path()) else {
            continue;
        };
        let first = registry.entries();
        drop(registry);
        let (registry, report) = Registry::open(dir.path()).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(registry.entries(), first);
    }
}

#[test]
fn address_books() {
    for data in corpus("vcard") {
        let _ = read_vcard(&String::from_utf8_lossy(&data));
        let _ = read_vcard_bytes(&data);
    }
    for data in corpus("csv") {
        let _ = read_csv(&data);
    }
}
