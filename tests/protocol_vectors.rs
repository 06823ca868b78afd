//! The test vectors published in docs/PROTOCOL.md, checked against the implementation: the
//! derivations in the library, and the request/response bytes of the real server.

use contact_discovery::client::{Client, ClientConfig};
use contact_discovery::domain::secret::parse_hex32;
use contact_discovery::domain::{CredentialKey, E164, Epoch, Fingerprint, ServerSecret, UserId};
use contact_discovery::protocol::{self, Format};
use serde_json::Value;

fn vectors() -> Value {
    let doc = include_str!("../docs/PROTOCOL.md");
    let start = doc.find("```json vectors").expect("vectors block") + "```json vectors".len();
    let end = start + doc[start..].find("```").expect("end of block");
    serde_json::from_str(&doc[start..end]).expect("vectors are JSON")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn secret(v: &Value) -> ServerSecret {
    ServerSecret::from_bytes(parse_hex32(v["secret_hex"].as_str().unwrap()).unwrap())
}

#[test]
fn salts() {
    let v = vectors();
    let secret = secret(&v);
    for case in v["salts"].as_array().unwrap() {
        let epoch = Epoch(case["epoch"].as_u64().unwrap());
        assert_eq!(
            hex(secret.salt(epoch).as_bytes()),
            case["salt_hex"].as_str().unwrap()
        );
    }
}

#[test]
fn fingerprints() {
    let v = vectors();
    let salt = secret(&v).salt(Epoch(v["fingerprints"]["epoch"].as_u64().unwrap()));
    for case in v["fingerprints"]["cases"].as_array().unwrap() {
        let fp = Fingerprint::compute(&salt, E164::parse(case["e164"].as_str().unwrap()).unwrap());
        assert_eq!(
            hex(&fp.to_bytes()),
            case["fingerprint_hex"].as_str().unwrap()
        );
        assert_eq!(
            protocol::encode_fingerprint(fp),
            case["base64url"].as_str().unwrap()
        );
    }
}

#[test]
fn request_bodies() {
    let v = vectors();
    let r = &v["request"];
    let epoch = r["epoch"].as_u64().unwrap();
    let salt = secret(&v).salt(Epoch(epoch));
    let fps: Vec<Fingerprint> = r["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| Fingerprint::compute(&salt, E164::parse(n.as_str().unwrap()).unwrap()))
        .collect();
    assert_eq!(
        hex(&protocol::encode_request(Format::Binary, epoch, &fps)),
        r["binary_request_hex"].as_str().unwrap()
    );
    let json: Value =
        serde_json::from_slice(&protocol::encode_request(Format::Json, epoch, &fps)).unwrap();
    assert_eq!(json, r["json_request"]);
}

#[test]
fn credential() {
    let v = vectors();
    let c = &v["credential"];
    let key = CredentialKey::from_bytes(parse_hex32(c["key_hex"].as_str().unwrap()).unwrap());
    let user = UserId::parse(c["user"].as_str().unwrap()).unwrap();
    let expiry = c["expiry"].as_u64().unwrap();
    assert_eq!(key.mint(&user, expiry), c["token"].as_str().unwrap());
    assert!(
        key.verify(c["token"].as_str().unwrap(), expiry - 60, 3_600)
            .is_ok()
    );
}

/// The real server, given the vector's secret and registrations, answers the vector's requests
/// with exactly the vector's response bytes.
#[tokio::test]
async fn the_server_answers_the_published_request() {
    use contact_discovery::clock::Clock;
    use contact_discovery::server::config::{Config, Settings};
    use contact_discovery::server::startup::{Application, load_keys};

    let v = vectors();
    let r = &v["request"];
    let epoch = r["epoch"].as_u64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.listeners.listen = "127.0.0.1:0".parse().unwrap();
    config.listeners.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.secrets.admin_token = Some("vectors-admin-token".parse().unwrap());
    config.secrets.server_secret = Some(v["secret_hex"].as_str().unwrap().parse().unwrap());
    let settings = Settings::try_from(config).unwrap();
    let app = Application::build_with_clock(&settings, Clock::manual(epoch * 86_400 + 100))
        .await
        .unwrap();
    let numbers: Vec<E164> = r["registered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| E164::parse(n.as_str().unwrap()).unwrap())
        .collect();
    let ops: Vec<_> = numbers
        .into_iter()
        .map(contact_discovery::store::registry::Op::Add)
        .collect();
    app.state().admin.registry.apply(&ops).unwrap();
    app.warm_up_all().await;
    let (public, keys) = (app.public_addr(), load_keys(&settings).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let token = keys
        .credential_key
        .mint(&UserId::parse("vectors").unwrap(), epoch * 86_400 + 3_600);
    let client = reqwest::Client::new();
    let binary = client
        .post(format!("http://{public}/v1/discover"))
        .header("content-type", "application/octet-stream")
        .bearer_auth(&token)
        .body(unhex(r["binary_request_hex"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(binary.status(), 200);
    assert_eq!(
        hex(&binary.bytes().await.unwrap()),
        r["binary_response_hex"].as_str().unwrap()
    );
    let json = client
        .post(format!("http://{public}/v1/discover"))
        .header("content-type", "application/json")
        .bearer_auth(&token)
        .body(r["json_request"].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 200);
    assert_eq!(json.json::<Value>().await.unwrap(), r["json_response"]);

    // The library client, given the vector's numbers, gets the vector's answer in both encodings.
    let numbers: Vec<E164> = r["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| E164::parse(n.as_str().unwrap()).unwrap())
        .collect();
    let expected: Vec<bool> = (0..numbers.len())
        .map(|i| {
            r["json_response"]["registered"]
                .as_array()
                .unwrap()
                .contains(&Value::from(i))
        })
        .collect();
    for format in [Format::Binary, Format::Json] {
        let mut config = ClientConfig::new(format!("http://{public}"), Some(token.clone()));
        config.format = format;
        let (registered, _) = Client::new(config)
            .unwrap()
            .discover(&numbers)
            .await
            .unwrap();
        assert_eq!(registered, expected);
    }
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

fn private_vectors() -> Value {
    let doc = include_str!("../docs/PROTOCOL.md");
    let marker = "```json private-vectors";
    let start = doc.find(marker).expect("private vectors block") + marker.len();
    let end = start + doc[start..].find("```").expect("end of block");
    serde_json::from_str(&doc[start..end]).expect("private vectors are JSON")
}

fn bytes32(text: &str) -> [u8; 32] {
    unhex(text).try_into().expect("32 bytes")
}

#[test]
fn rfc9497_vectors_through_our_wrappers() {
    use contact_discovery::domain::oprf::{BlindedElement, OprfKey};
    let v = private_vectors();
    let rfc = &v["rfc9497"];
    let key = OprfKey::from_seed(
        &unhex(rfc["seed_hex"].as_str().unwrap()),
        &unhex(rfc["key_info_hex"].as_str().unwrap()),
        Epoch(0),
    )
    .unwrap();
    for case in rfc["cases"].as_array().unwrap() {
        let blinded =
            BlindedElement::from_bytes(&bytes32(case["blinded_hex"].as_str().unwrap())).unwrap();
        assert_eq!(
            hex(&key.evaluate_blinded(&blinded).to_bytes()),
            case["evaluated_hex"].as_str().unwrap()
        );
        let input = unhex(case["input_hex"].as_str().unwrap());
        assert_eq!(
            hex(key.evaluate_input(&input).unwrap().as_bytes()),
            case["output_hex"].as_str().unwrap()
        );
    }
}

#[test]
fn private_keys_evaluation_and_set() {
    use contact_discovery::domain::oprf::{BlindedElement, OprfKey};
    use contact_discovery::protocol::evaluate;
    use contact_discovery::protocol::private_set::{SetParams, tag_to_hex};
    use contact_discovery::store::private_set::{HistoryLimits, PrivateSet, PrivateSetConfig};
    let v = private_vectors();
    let secret = secret(&vectors());
    for case in v["keys"].as_array().unwrap() {
        let key = OprfKey::derive(&secret, Epoch(case["key_epoch"].as_u64().unwrap())).unwrap();
        let output = key
            .output(E164::parse(case["e164"].as_str().unwrap()).unwrap())
            .unwrap();
        assert_eq!(hex(output.as_bytes()), case["output_hex"].as_str().unwrap());
        assert_eq!(
            format!("{:016x}", output.set_hash()),
            case["set_hash_hex"].as_str().unwrap()
        );
        let blinded =
            BlindedElement::from_bytes(&bytes32(case["blinded_hex"].as_str().unwrap())).unwrap();
        assert_eq!(
            hex(&key.evaluate_blinded(&blinded).to_bytes()),
            case["evaluated_hex"].as_str().unwrap()
        );
    }
    // The evaluation bodies.
    let e = &v["evaluate"];
    let key = OprfKey::derive(&secret, Epoch(e["key_epoch"].as_u64().unwrap())).unwrap();
    let request = unhex(e["binary_request_hex"].as_str().unwrap());
    let decoded = evaluate::decode_evaluate(Format::Binary, &request, 10).unwrap();
    assert_eq!(
        evaluate::encode_evaluate(Format::Binary, decoded.key_epoch, &decoded.elements),
        request
    );
    let evaluated: Vec<_> = decoded
        .elements
        .iter()
        .map(|b| key.evaluate_blinded(b))
        .collect();
    assert_eq!(
        hex(&evaluate::encode_evaluated(
            Format::Binary,
            decoded.key_epoch,
            &evaluated
        )),
        e["binary_response_hex"].as_str().unwrap()
    );
    // The set, as the server builds it.
    let s = &v["set"];
    let inverse = (1.0 / s["false_positive_rate"].as_f64().unwrap()).round() as u64;
    let registered: Vec<E164> = s["registered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| E164::parse(n.as_str().unwrap()).unwrap())
        .collect();
    let params = SetParams::for_items(0, registered.len() as u64, inverse);
    assert_eq!(
        (params.range, params.shards, params.golomb_p),
        (
            s["range"].as_u64().unwrap(),
            s["shards"].as_u64().unwrap() as u32,
            s["golomb_p"].as_u64().unwrap() as u8
        )
    );
    let key = OprfKey::derive(&secret, Epoch(0)).unwrap();
    for (number, position) in s["positions"].as_object().unwrap() {
        let hash = key.output(E164::parse(number).unwrap()).unwrap().set_hash();
        assert_eq!(
            params.position(hash),
            position.as_u64().unwrap(),
            "{number}"
        );
    }
    let config = PrivateSetConfig {
        inverse_fpr: inverse,
        history: HistoryLimits {
            max_age_secs: 1,
            max_values: 1,
        },
    };
    let digits: Vec<u64> = registered.iter().map(|n| n.get()).collect();
    let set = PrivateSet::build_from_digits(&config, &secret, Epoch(0), &digits).unwrap();
    assert_eq!(set.params(), params);
    let published = set.published();
    let shards: Vec<String> = published.shards.iter().map(|s| hex(&s.bytes)).collect();
    let etags: Vec<String> = published
        .shards
        .iter()
        .map(|s| tag_to_hex(&s.etag))
        .collect();
    assert_eq!(serde_json::json!(shards), s["shard_hex"]);
    assert_eq!(serde_json::json!(etags), s["etags"]);
    assert_eq!(
        tag_to_hex(&published.version),
        s["version"].as_str().unwrap()
    );
}
