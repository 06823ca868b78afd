use std::num::NonZeroU64;

use super::*;
use crate::domain::{E164, EpochSchedule};
use crate::protocol::private_set::{Located, apply_changes};
use crate::store::registry::{Op, Registry};
use crate::store::rotation::{RotationPolicy, Rotator};

const CONFIG: PrivateSetConfig = PrivateSetConfig {
    inverse_fpr: 1_000_000,
    history: HistoryLimits {
        max_age_secs: 86_400,
        max_values: 1_000_000,
    },
};

/// `n` distinct numbers (`seed` picks the range).
fn numbers(n: usize, seed: u64) -> Vec<E164> {
    (0..n as u64)
        .map(|i| E164::from_u64(15_550_000_000 + seed * 1_000_000 + i * 7).unwrap())
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    registry: Arc<Registry>,
    sets: Arc<PrivateSets>,
    rotator: Rotator<PrivateSet>,
}

async fn fixture(numbers: &[E164], config: PrivateSetConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = Registry::open(dir.path()).unwrap();
    let registry = Arc::new(registry);
    let ops: Vec<Op> = numbers.iter().map(|n| Op::Add(*n)).collect();
    registry.apply(&ops).unwrap();
    let policy = RotationPolicy::new(EpochSchedule::new(NonZeroU64::new(1_000).unwrap()), 0);
    let sets = Arc::new(PrivateSets::new(policy, ServerSecret::from_bytes([4; 32])));
    let metrics = Metrics::new().unwrap();
    let rotator = Rotator::new(
        Arc::clone(&sets),
        Arc::clone(&registry),
        Clock::manual(5_500),
        metrics.private.rotator.clone(),
        config,
        "private set",
    );
    rotator.step().await;
    Fixture {
        _dir: dir,
        registry,
        sets,
        rotator,
    }
}

impl Fixture {
    fn set(&self) -> Arc<PrivateSet> {
        Arc::clone(&self.sets.snapshot()[0].1.index)
    }
}

/// Where `number` falls in `set` (as a client computes it, from the OPRF output).
fn locate(set: &PrivateSet, number: E164) -> Located {
    set.params()
        .locate(set.key().output(number).unwrap().set_hash())
}

/// The decoded values of every shard of `published`.
fn decoded(set: &PrivateSet, published: &Published) -> Vec<Vec<u64>> {
    let params = set.params();
    published
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            gcs::decode(
                &s.bytes,
                params.golomb_p,
                params.shard_limits(i as u32, s.items),
            )
            .unwrap()
        })
        .collect()
}

/// Which of `numbers` the set holds (shards decoded once).
fn held(set: &PrivateSet, numbers: &[E164]) -> Vec<bool> {
    let shards = decoded(set, &set.published());
    numbers
        .iter()
        .map(|n| {
            let at = locate(set, *n);
            shards[at.shard as usize].binary_search(&at.value).is_ok()
        })
        .collect()
}

#[tokio::test]
async fn a_built_set_holds_the_discoverable_numbers_and_few_others() {
    let numbers = numbers(3_000, 1);
    let (registered, others) = numbers.split_at(2_000);
    let f = fixture(registered, CONFIG).await;
    let set = f.set();
    assert_eq!(set.published().items, 2_000);
    assert!(held(&set, registered).into_iter().all(|h| h));
    // At 1e-6 per lookup, 1,000 outsiders match with probability about 0.1 %.
    assert!(held(&set, others).into_iter().all(|h| !h));
    // Replicas with the same secret and registry build the same bytes.
    let again = fixture(registered, CONFIG).await;
    assert_eq!(again.set().published().version, set.published().version);
}

#[tokio::test]
async fn changes_are_published_and_every_kept_version_has_a_delta_to_the_current() {
    let numbers = numbers(1_500, 2);
    let (start, later) = numbers.split_at(1_000);
    let f = fixture(start, CONFIG).await;
    let set = f.set();
    let mut versions = vec![set.published()];
    let rounds: [Vec<Op>; 3] = [
        later[..200].iter().map(|n| Op::Add(*n)).collect(),
        start[..100]
            .iter()
            .map(|n| Op::Remove(*n))
            .chain(start[100..150].iter().map(|n| Op::Hide(*n)))
            .collect(),
        // Back and forth within one publication: only the net change is published.
        later[200..300]
            .iter()
            .map(|n| Op::Add(*n))
            .chain(later[200..250].iter().map(|n| Op::Remove(*n)))
            .chain(start[100..120].iter().map(|n| Op::Add(*n)))
            .collect(),
    ];
    for (round, ops) in rounds.iter().enumerate() {
        f.registry.apply(ops).unwrap();
        assert_eq!(
            set.published().version,
            versions.last().unwrap().version,
            "queued only"
        );
        let stats = set.publish(round as u64).unwrap();
        assert_eq!(stats.changes, ops.len());
        versions.push(set.published());
    }
    let discoverable = |n: &E164| {
        (start[150..].contains(n) || start[100..120].contains(n))
            || later[..200].contains(n)
            || later[250..300].contains(n)
    };
    let want: Vec<bool> = numbers.iter().map(discoverable).collect();
    assert_eq!(held(&set, &numbers), want);
    let current = set.published();
    assert_eq!(current.items, (850 + 20 + 200 + 50) as u64);
    assert!(matches!(
        set.delta_since(current.version),
        DeltaAnswer::Current
    ));
    assert!(matches!(set.delta_since([0; 16]), DeltaAnswer::Unavailable));
    for old in &versions[..versions.len() - 1] {
        let DeltaAnswer::Delta(delta) = set.delta_since(old.version) else {
            panic!("no delta from a kept version");
        };
        assert_eq!((delta.from, delta.to), (old.version, current.version));
        let mut shards = decoded(&set, old);
        for change in &delta.shards {
            let values = &mut shards[change.shard as usize];
            apply_changes(values, &change.added, &change.removed).unwrap();
            let bytes = gcs::encode(values, set.params().golomb_p).unwrap();
            assert_eq!(shard_etag(&set.params(), change.shard, &bytes), change.etag);
            assert_eq!(change.etag, current.shards[change.shard as usize].etag);
        }
        assert_eq!(shards, decoded(&set, &current));
    }
}

#[test]
fn a_shared_value_stays_while_one_of_its_numbers_is_registered() {
    let n = E164::parse("+15550000001").unwrap();
    let change = |discoverable, base| Pending {
        number: n,
        discoverable,
        base,
    };
    let (add, remove) = (
        change(true, ChangeBase::Exact),
        change(false, ChangeBase::Exact),
    );
    // Two numbers share value 7: removing one leaves a copy.
    assert_eq!(net_changes(&[7, 7], &[(7, &remove)]), (vec![], vec![7]));
    assert_eq!(net_changes(&[7], &[(7, &add)]), (vec![7], vec![]));
    // A removal of a value not held changes nothing.
    assert_eq!(net_changes(&[], &[(7, &remove)]), (vec![], vec![]));
    // In order: added then removed within one publication is nothing.
    assert_eq!(
        net_changes(&[], &[(7, &add), (7, &remove)]),
        (vec![], vec![])
    );
    // A stale set (built before a bulk replace) adds only what it lacks.
    let stale = change(true, ChangeBase::Stale);
    assert_eq!(net_changes(&[7], &[(7, &stale)]), (vec![], vec![]));
    assert_eq!(
        net_changes(&[], &[(7, &stale), (7, &stale)]),
        (vec![7], vec![])
    );
}

#[tokio::test]
async fn a_set_grown_past_its_rate_is_rebuilt_with_a_wider_range() {
    let numbers = numbers(40, 3);
    let f = fixture(&numbers[..4], CONFIG).await;
    let first = f.set();
    assert!(!first.worn());
    // Built for 4 numbers with 1/8 room: a fifth exceeds the target rate.
    f.registry.apply(&[Op::Add(numbers[10])]).unwrap();
    first.publish(1).unwrap();
    assert!(first.worn());
    f.registry.apply(&[Op::Add(numbers[11])]).unwrap();
    f.rotator.step().await;
    let rebuilt = f.set();
    assert!(!Arc::ptr_eq(&first, &rebuilt));
    assert!(rebuilt.params().range > first.params().range);
    assert!(!rebuilt.worn());
    rebuilt.publish(2).unwrap();
    let wanted: Vec<E164> = numbers[..4]
        .iter()
        .chain(&numbers[10..12])
        .copied()
        .collect();
    assert!(held(&rebuilt, &wanted).into_iter().all(|h| h));
}
