//! `audit`: the threat model's numbers, measured on the machine it runs on.
//!
//! It times how fast one core (and all cores) computes fingerprints, and turns that into how
//! long whoever holds an epoch's salt (the operator, a compromised replica, anyone who fetched
//! `/v1/epoch`) needs to reverse every fingerprint of a numbering plan, and into how many
//! accounts an enumeration attack needs under the configured rate limit to cover a plan in a year.

use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::domain::{E164, Fingerprint, Salt};

/// A numbering plan an attacker would sweep.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    /// What it is.
    pub name: &'static str,
    /// How many numbers it holds.
    pub numbers: f64,
}

/// Plans from small to the whole E.164 space.
pub const PLANS: &[Plan] = &[
    Plan {
        name: "an 8-digit national plan (a small country)",
        numbers: 1e8,
    },
    Plan {
        name: "US mobile ranges (about 5 x 10^8 numbers)",
        numbers: 5e8,
    },
    Plan {
        name: "India mobile: 10 digits starting 6-9",
        numbers: 4e9,
    },
    Plan {
        name: "every 10-digit number of one country",
        numbers: 1e10,
    },
    Plan {
        name: "every number of E.164 up to 15 digits (upper bound)",
        numbers: 1e15,
    },
];

/// Measured speed and the figures derived from it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Fingerprints per second on one core.
    pub per_core_per_second: f64,
    /// Nanoseconds per fingerprint on one core.
    pub nanos_per_fingerprint: f64,
    /// Cores used for the parallel measurement.
    pub cores: usize,
    /// Fingerprints per second on all cores.
    pub all_cores_per_second: f64,
    /// Rate limit burst the enumeration figures assume.
    pub rate_limit_burst: u64,
    /// Rate limit refill per day the enumeration figures assume.
    pub rate_limit_refill_per_day: u64,
    /// Numbers one account can test in its first year.
    pub lookups_per_account_year: f64,
    /// Per plan: reversal time and enumeration cost.
    pub plans: Vec<PlanFigures>,
}

/// What one plan costs an attacker.
#[derive(Debug, Clone, Serialize)]
pub struct PlanFigures {
    /// The plan.
    pub plan: Plan,
    /// Seconds for one core to fingerprint every number of the plan under one salt.
    pub reverse_seconds_one_core: f64,
    /// The same on every core of this machine.
    pub reverse_seconds_all_cores: f64,
    /// Accounts needed to look up every number in a year under the rate limit.
    pub accounts_for_a_year: f64,
}

/// Fingerprints per second while hashing consecutive numbers of a 10-digit plan for `time`.
fn rate(time: Duration, parallel: bool) -> f64 {
    let salt = Salt::from_bytes([0x5a; 32]);
    let base = 15_550_000_000u64;
    let chunk = 200_000u64;
    let started = Instant::now();
    let mut done = 0u64;
    let mut sink = 0u64;
    while started.elapsed() < time {
        let first = base + done;
        sink ^= if parallel {
            (first..first + chunk)
                .into_par_iter()
                .map(|n| E164::from_u64(n).map_or(0, |n| Fingerprint::compute(&salt, n).key()))
                .reduce(|| 0, |a, b| a ^ b)
        } else {
            (first..first + chunk)
                .map(|n| E164::from_u64(n).map_or(0, |n| Fingerprint::compute(&salt, n).key()))
                .fold(0, |a, b| a ^ b)
        };
        done += chunk;
    }
    std::hint::black_box(sink);
    done as f64 / started.elapsed().as_secs_f64()
}

/// Measures for about `seconds` per mode and computes the figures.
pub fn run(seconds: f64, burst: u64, refill_per_day: u64) -> AuditReport {
    let time = Duration::from_secs_f64(seconds.max(0.2));
    let per_core = rate(time, false);
    let all = rate(time, true);
    let per_account_year = burst as f64 + refill_per_day as f64 * 365.0;
    let plans = PLANS
        .iter()
        .map(|plan| PlanFigures {
            plan: *plan,
            reverse_seconds_one_core: plan.numbers / per_core,
            reverse_seconds_all_cores: plan.numbers / all,
            accounts_for_a_year: (plan.numbers / per_account_year).ceil(),
        })
        .collect();
    AuditReport {
        per_core_per_second: per_core,
        nanos_per_fingerprint: 1e9 / per_core,
        cores: rayon::current_num_threads(),
        all_cores_per_second: all,
        rate_limit_burst: burst,
        rate_limit_refill_per_day: refill_per_day,
        lookups_per_account_year: per_account_year,
        plans,
    }
}

/// A duration in the largest unit that keeps it readable.
pub fn human_seconds(secs: f64) -> String {
    const UNITS: &[(f64, &str)] = &[
        (365.25 * 86_400.0, "years"),
        (86_400.0, "days"),
        (3_600.0, "hours"),
        (60.0, "minutes"),
        (1.0, "seconds"),
    ];
    for (size, name) in UNITS {
        if secs >= *size {
            return format!("{:.1} {name}", secs / size);
        }
    }
    format!("{:.2} seconds", secs)
}

impl AuditReport {
    /// The report as text for a reviewer.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "Fingerprint speed on this machine: {:.1} M/s on one core ({:.0} ns each), {:.1} M/s on {} cores.\n\n",
            self.per_core_per_second / 1e6,
            self.nanos_per_fingerprint,
            self.all_cores_per_second / 1e6,
            self.cores
        ));
        out.push_str(
            "Reversal: whoever holds an epoch's salt (the operator, a replica, anyone who asked\n\
             /v1/epoch) can fingerprint every number of a plan and match what it received:\n",
        );
        for p in &self.plans {
            out.push_str(&format!(
                "  {:<52} one core: {:>14}   all cores: {:>14}\n",
                p.plan.name,
                human_seconds(p.reverse_seconds_one_core),
                human_seconds(p.reverse_seconds_all_cores)
            ));
        }
        out.push_str(&format!(
            "\nEnumeration through the API: with a burst of {} and {} lookups a day, one account\n\
             tests at most {:.0} numbers in a year. Accounts needed to cover a plan in a year:\n",
            self.rate_limit_burst, self.rate_limit_refill_per_day, self.lookups_per_account_year
        ));
        for p in &self.plans {
            out.push_str(&format!(
                "  {:<52} {:>16.0}\n",
                p.plan.name, p.accounts_for_a_year
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_from_the_measured_rate() {
        let report = run(0.2, 50_000, 2_000);
        assert!(report.per_core_per_second > 0.0);
        assert_eq!(report.lookups_per_account_year, 50_000.0 + 2_000.0 * 365.0);
        let us = &report.plans[1];
        assert!((us.reverse_seconds_one_core * report.per_core_per_second - 5e8).abs() < 1.0);
        assert_eq!(us.accounts_for_a_year, (5e8f64 / 780_000.0).ceil());
        assert!(report.render_text().contains("US mobile ranges"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_seconds(90.0), "1.5 minutes");
        assert_eq!(human_seconds(0.5), "0.50 seconds");
        assert_eq!(human_seconds(2.0 * 86_400.0), "2.0 days");
    }
}
