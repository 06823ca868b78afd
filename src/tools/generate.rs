//! Synthetic registrations with a realistic country-code mix, for demos, tests and load tests.
//!
//! The weights follow the rough share of messaging users by country (largest markets first); each
//! country draws mobile numbers from its real mobile prefixes and national number length, so the
//! numbers look like what a registry really holds. Deterministic for a given seed.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::domain::E164;

/// One country's share of the synthetic population and the shape of its mobile numbers.
struct Plan {
    country_code: u64,
    weight: u32,
    /// Mobile prefixes that follow the country code.
    prefixes: &'static [u64],
    /// Digits that follow the prefix.
    subscriber_digits: u32,
}

const PLANS: &[Plan] = &[
    Plan {
        country_code: 91,
        weight: 180,
        prefixes: &[6, 7, 8, 9],
        subscriber_digits: 9,
    },
    Plan {
        country_code: 86,
        weight: 120,
        prefixes: &[13, 15, 18, 19],
        subscriber_digits: 9,
    },
    Plan {
        country_code: 1,
        weight: 90,
        prefixes: &[201, 212, 305, 415, 512, 617, 646, 702, 917],
        subscriber_digits: 7,
    },
    Plan {
        country_code: 62,
        weight: 70,
        prefixes: &[811, 812, 813, 821, 852, 857, 878],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 55,
        weight: 70,
        prefixes: &[119, 219, 319, 419, 519, 619, 719, 819],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 92,
        weight: 45,
        prefixes: &[300, 301, 321, 333, 345],
        subscriber_digits: 7,
    },
    Plan {
        country_code: 234,
        weight: 45,
        prefixes: &[803, 806, 813, 816, 903],
        subscriber_digits: 7,
    },
    Plan {
        country_code: 880,
        weight: 35,
        prefixes: &[13, 17, 18, 19],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 7,
        weight: 35,
        prefixes: &[903, 916, 925, 985],
        subscriber_digits: 7,
    },
    Plan {
        country_code: 52,
        weight: 35,
        prefixes: &[55, 81, 33],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 81,
        weight: 25,
        prefixes: &[70, 80, 90],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 63,
        weight: 25,
        prefixes: &[917, 918, 927, 995],
        subscriber_digits: 7,
    },
    Plan {
        country_code: 49,
        weight: 20,
        prefixes: &[151, 160, 170, 171, 176],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 44,
        weight: 18,
        prefixes: &[7400, 7500, 7800, 7900],
        subscriber_digits: 6,
    },
    Plan {
        country_code: 33,
        weight: 17,
        prefixes: &[6, 7],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 39,
        weight: 15,
        prefixes: &[320, 333, 347, 380],
        subscriber_digits: 7,
    },
    Plan {
        country_code: 34,
        weight: 12,
        prefixes: &[6, 7],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 90,
        weight: 20,
        prefixes: &[530, 532, 542, 555],
        subscriber_digits: 7,
    },
    Plan {
        country_code: 20,
        weight: 25,
        prefixes: &[10, 11, 12, 15],
        subscriber_digits: 8,
    },
    Plan {
        country_code: 27,
        weight: 15,
        prefixes: &[72, 73, 82, 83],
        subscriber_digits: 7,
    },
];

/// Generates `count` distinct mobile numbers from `seed`. The same seed gives the same numbers.
pub fn numbers(count: usize, seed: u64) -> Vec<E164> {
    let total: u32 = PLANS.iter().map(|p| p.weight).sum();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut pick = rng.random_range(0..total);
        let plan = PLANS
            .iter()
            .find(|p| {
                if pick < p.weight {
                    true
                } else {
                    pick -= p.weight;
                    false
                }
            })
            .unwrap_or(&PLANS[0]);
        let prefix = plan.prefixes[rng.random_range(0..plan.prefixes.len())];
        let scale = 10u64.pow(plan.subscriber_digits);
        let national = prefix * scale + rng.random_range(0..scale);
        let digits = national.checked_ilog10().unwrap_or(0) + 1;
        let value = plan.country_code * 10u64.pow(digits) + national;
        let Ok(number) = E164::from_u64(value) else {
            continue;
        };
        if seen.insert(number) {
            out.push(number);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_distinct_and_valid() {
        let a = numbers(5_000, 7);
        assert_eq!(a, numbers(5_000, 7));
        assert_ne!(a, numbers(5_000, 8));
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 5_000);
        for n in &a {
            assert!(E164::parse(&n.to_string()).is_ok());
            let len = n.to_string().len() - 1;
            assert!((8..=15).contains(&len), "{len}");
        }
        // A realistic mix: India and China lead, and no country is missing.
        let share = |cc: &str| a.iter().filter(|n| n.to_string().starts_with(cc)).count();
        assert!(share("+91") > share("+49"));
        assert!(share("+49") > 0);
    }

    /// Synthetic numbers must look real to the client's libphonenumber check too, or demos and
    /// load tests would exercise numbers no client would ever send.
    #[test]
    fn every_generated_number_is_accepted_by_the_client_normaliser() {
        let normaliser = crate::client::normalise::Normaliser::new(None).unwrap();
        for number in numbers(20_000, 21) {
            assert_eq!(
                normaliser.normalise(&number.to_string()),
                Ok(number),
                "{number}"
            );
        }
    }
}
