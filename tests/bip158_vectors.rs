//! BIP-158's own test vectors through `protocol::gcs`: for every block in
//! `tests/fixtures/bip158/testnet-19.json` (from the bitcoin/bips repository; see the README
//! beside it), the basic filter's elements are computed as BIP-158 says, hashed into
//! `[0, N · M)`, sorted, and `gcs::encode(values, 19)` must give the vector's filter bytes;
//! `decode` and `ShardIndex` must give the values back.
//!
//! The elements (BIP-158, "Contents"): every output's scriptPubKey except empty ones and those
//! starting with OP_RETURN (0x6a), and the script each non-coinbase input spends (listed in the
//! vector, since it is in an earlier block), empty ones left out ("nil items MUST NOT be
//! included"), as a set (duplicates once). Hashing ("hash_to_range"): SipHash-2-4 keyed by the
//! first 16 bytes of the block hash in its internal (little-endian) byte order as k0, k1 (each
//! little-endian), then `(hash · F) >> 64` with F = N · M, M = 784931.

use std::collections::BTreeSet;

use contact_discovery::protocol::gcs::{self, Limits, ShardIndex};
use siphasher::sip::SipHasher24;

const P: u8 = 19;
const M: u64 = 784_931;

struct Vector {
    height: u64,
    block_hash: [u8; 32],
    block: Vec<u8>,
    spent_scripts: Vec<Vec<u8>>,
    filter: Vec<u8>,
    notes: String,
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn vectors() -> Vec<Vector> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bip158/testnet-19.json"
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    // The first row is the header; columns: height, block hash, block, spent scripts, previous
    // filter header, filter, filter header, notes.
    rows.iter()
        .skip(1)
        .map(|row| {
            let text = |i: usize| row[i].as_str().expect("string column");
            // The hash as displayed is big-endian; BIP-158 keys with its internal byte order.
            let mut block_hash: [u8; 32] = hex(text(1)).try_into().expect("32-byte hash");
            block_hash.reverse();
            Vector {
                height: row[0].as_u64().expect("height"),
                block_hash,
                block: hex(text(2)),
                spent_scripts: row[3]
                    .as_array()
                    .expect("spent scripts")
                    .iter()
                    .map(|s| hex(s.as_str().expect("script")))
                    .collect(),
                filter: hex(text(5)),
                notes: text(7).to_owned(),
            }
        })
        .collect()
}

/// Just enough of Bitcoin's block format to find the output scripts.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let taken = &self.bytes[self.at..self.at + n];
        self.at += n;
        taken
    }

    fn byte(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn compact_size(&mut self) -> usize {
        let n = match self.byte() {
            0xfd => u64::from(u16::from_le_bytes(self.take(2).try_into().unwrap())),
            0xfe => u64::from(u32::from_le_bytes(self.take(4).try_into().unwrap())),
            0xff => u64::from_le_bytes(self.take(8).try_into().unwrap()),
            small => u64::from(small),
        };
        usize::try_from(n).unwrap()
    }

    fn var_bytes(&mut self) -> &'a [u8] {
        let n = self.compact_size();
        self.take(n)
    }
}

/// Every output script of every transaction in `block`, in order; also how many inputs the
/// block's transactions have beyond the coinbase's.
fn output_scripts(block: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut reader = Reader {
        bytes: block,
        at: 0,
    };
    reader.take(80); // the header
    let transactions = reader.compact_size();
    let mut scripts = Vec::new();
    let mut spending_inputs = 0;
    for tx in 0..transactions {
        reader.take(4); // version
        let mut inputs = reader.compact_size();
        // BIP-144: a zero input count is the segwit marker, followed by the flag 0x01.
        let segwit = inputs == 0;
        if segwit {
            assert_eq!(reader.byte(), 0x01, "segwit flag");
            inputs = reader.compact_size();
        }
        for _ in 0..inputs {
            reader.take(36); // the outpoint spent
            reader.var_bytes(); // scriptSig
            reader.take(4); // sequence
        }
        if tx > 0 {
            spending_inputs += inputs;
        }
        let outputs = reader.compact_size();
        for _ in 0..outputs {
            reader.take(8); // amount
            scripts.push(reader.var_bytes().to_vec());
        }
        if segwit {
            for _ in 0..inputs {
                for _ in 0..reader.compact_size() {
                    reader.var_bytes();
                }
            }
        }
        reader.take(4); // lock time
    }
    assert_eq!(reader.at, block.len(), "the whole block was read");
    (scripts, spending_inputs)
}

fn filter_elements(vector: &Vector) -> BTreeSet<Vec<u8>> {
    let (outputs, spending_inputs) = output_scripts(&vector.block);
    assert_eq!(
        vector.spent_scripts.len(),
        spending_inputs,
        "block {}: one spent script per non-coinbase input",
        vector.height
    );
    outputs
        .into_iter()
        .filter(|script| script.first().is_some_and(|&op| op != 0x6a))
        .chain(
            vector
                .spent_scripts
                .iter()
                .filter(|script| !script.is_empty())
                .cloned(),
        )
        .collect()
}

fn hashed(vector: &Vector, elements: &BTreeSet<Vec<u8>>) -> (Vec<u64>, u64) {
    let k0 = u64::from_le_bytes(vector.block_hash[..8].try_into().unwrap());
    let k1 = u64::from_le_bytes(vector.block_hash[8..16].try_into().unwrap());
    let hasher = SipHasher24::new_with_keys(k0, k1);
    let f = elements.len() as u64 * M;
    let mut values: Vec<u64> = elements
        .iter()
        .map(|element| ((u128::from(hasher.hash(element)) * u128::from(f)) >> 64) as u64)
        .collect();
    values.sort_unstable();
    (values, f)
}

#[test]
fn every_basic_filter_is_reproduced() {
    let vectors = vectors();
    assert_eq!(
        vectors.len(),
        10,
        "BIP-158 publishes ten testnet-19 vectors"
    );
    for vector in &vectors {
        let elements = filter_elements(vector);
        let (values, f) = hashed(vector, &elements);
        let encoded = gcs::encode(&values, P).unwrap();
        assert_eq!(
            encoded, vector.filter,
            "block {} ({}): filter bytes",
            vector.height, vector.notes
        );
        let limits = Limits {
            max_items: values.len() as u64,
            limit: f,
        };
        assert_eq!(gcs::decode(&vector.filter, P, limits).unwrap(), values);
        let index = ShardIndex::new(vector.filter.clone(), P, limits).unwrap();
        assert_eq!(index.len(), values.len() as u64);
        assert!(values.iter().all(|&v| index.contains(v)));
    }
}

#[test]
fn the_vectors_cover_what_their_notes_say() {
    let vectors = vectors();
    let by_note = |note: &str| {
        vectors
            .iter()
            .find(|v| v.notes.starts_with(note))
            .unwrap_or_else(|| panic!("no vector noted {note:?}"))
    };
    // An empty block filter: one zero byte.
    assert_eq!(by_note("Empty data").filter, [0x00]);
    // OP_RETURN outputs are left out: the segwit blocks' coinbases carry their witness
    // commitment in one. (Block 15007's note speaks of an OP_RETURN output, but its block holds
    // only a coinbase paying to one P2PK script; its filter is that one element, and is
    // reproduced above.)
    let witness = by_note("Includes witness data");
    let (outputs, _) = output_scripts(&witness.block);
    let op_return: Vec<&Vec<u8>> = outputs
        .iter()
        .filter(|s| s.first() == Some(&0x6a))
        .collect();
    assert_eq!(op_return.len(), 1);
    assert!(!filter_elements(witness).contains(op_return[0]));
    let (outputs, _) = output_scripts(&by_note("Tx has non-standard OP_RETURN").block);
    assert_eq!(outputs.len(), 1);
    assert_eq!(
        filter_elements(by_note("Tx has non-standard OP_RETURN")).len(),
        1
    );
    // Empty scripts, paid to or spent from, are left out.
    let (outputs, _) = output_scripts(&by_note("Tx pays to empty output script").block);
    assert!(outputs.iter().any(Vec::is_empty));
    let spends = by_note("Tx spends from empty output script");
    assert!(spends.spent_scripts.iter().any(Vec::is_empty));
    assert!(!filter_elements(spends).contains(&Vec::new()));
    // A script spent many times is one element.
    let duplicate = by_note("Duplicate pushdata");
    let distinct: BTreeSet<&Vec<u8>> = duplicate.spent_scripts.iter().collect();
    assert!(distinct.len() < duplicate.spent_scripts.len());
    // The segwit block's witness data was parsed past, not read as outputs.
    let (outputs, inputs) = output_scripts(&by_note("Includes witness data").block);
    assert_eq!((outputs.len(), inputs), (3, 1));
    // Tampered filters are refused or decode to other values.
    for vector in &vectors {
        let elements = filter_elements(vector);
        let (values, f) = hashed(vector, &elements);
        let limits = Limits {
            max_items: values.len() as u64,
            limit: f,
        };
        let mut longer = vector.filter.clone();
        longer.push(0);
        assert!(gcs::decode(&longer, P, limits).is_err());
        for at in 0..vector.filter.len() {
            let mut changed = vector.filter.clone();
            changed[at] ^= 0x01;
            assert_ne!(gcs::decode(&changed, P, limits).ok(), Some(values.clone()));
        }
    }
}
