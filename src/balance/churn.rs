//! `affinity --churn`: a dry run of the hashing core over a configured pool.
//!
//! For the pool and algorithm it reports, exactly over the Maglev table or
//! the ring's 2^32 key points (no sampling):
//! * each backend's share of the key space;
//! * for each backend, the share of keys that moves if it alone becomes
//!   unhealthy, beside the optimum (its own share);
//! * the share that moves if one more backend of weight 1 joined the config
//!   (a full rebuild), beside the optimum `1/(Σw + 1)`;
//! * how long building the selector took.
//!
//! Draining backends (`state = "drain"` in the file) are out of the table
//! the report starts from, as they are in the proxy: their share is 0, and
//! the report says what undraining one moves back.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::balance::member::{Member, total_weight};
use crate::balance::selector::{BuildError, HashAlgorithm, HashSelector, HashTable};

/// One backend's share of the key space.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Share {
    /// Backend name.
    pub name: String,
    /// Configured weight.
    pub weight: u32,
    /// Fraction of the key space, 0..1 (0 while draining).
    pub share: f64,
    /// Draining: out of the table for new keys.
    pub draining: bool,
    /// Draining: the share undraining it moves back to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undrain_moves: Option<f64>,
}

/// What moves when one backend leaves the pool.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Removal {
    /// The backend that leaves.
    pub name: String,
    /// Fraction of the key space that changes backend.
    pub moved: f64,
    /// The least that must move: the leaving backend's share.
    pub optimal: f64,
}

/// What moves when one more backend of weight 1 joins the configured pool.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Addition {
    /// Fraction of the key space that changes backend.
    pub moved: f64,
    /// The least that must move: the newcomer's share, `1/(Σw + 1)`.
    pub optimal: f64,
}

/// The whole dry-run report; serialises to the `--churn --json` object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChurnReport {
    /// `maglev` or `ring_hash`.
    pub algorithm: String,
    /// Maglev table size, or the number of points on the ring.
    pub table_size: usize,
    /// Time to build the selector for the configured pool, in milliseconds.
    pub build_ms: f64,
    /// Each backend's share, in config order.
    pub backends: Vec<Share>,
    /// Each backend's removal, in config order.
    pub remove: Vec<Removal>,
    /// One more backend joining.
    pub add: Addition,
    /// The pool's `slow_start` in seconds, when it has one (the caller sets
    /// it: the dry run itself does not ramp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start_seconds: Option<f64>,
}

/// Runs the dry run for `members` (config order) under `algorithm`, the
/// backends `draining` flags (missing: not draining) out of the table.
pub fn churn(
    algorithm: HashAlgorithm,
    members: &[Member],
    draining: &[bool],
) -> Result<ChurnReport, BuildError> {
    let started = Instant::now();
    let table = HashTable::new(algorithm, members)?;
    let drains = |i: usize| draining.get(i).copied().unwrap_or(false);
    let all_up: Vec<bool> = (0..members.len()).map(|i| !drains(i)).collect();
    let full = HashSelector::new(&table, &all_up);
    let build: Duration = started.elapsed();

    let shares = full.shares();
    let backends = members
        .iter()
        .zip(&shares)
        .enumerate()
        .map(|(i, (m, &share))| Share {
            name: m.name.clone(),
            weight: m.weight,
            share,
            draining: drains(i),
            undrain_moves: drains(i).then(|| {
                let mut back = all_up.clone();
                back[i] = true;
                HashSelector::new(&table, &back).moved_fraction(&full, Some)
            }),
        })
        .collect();

    let mut health = all_up.clone();
    let remove = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let was = health[i];
            health[i] = false;
            let without = HashSelector::new(&table, &health);
            health[i] = was;
            Removal {
                name: m.name.clone(),
                moved: full.moved_fraction(&without, Some),
                optimal: shares[i],
            }
        })
        .collect();

    let mut grown = members.to_vec();
    grown.push(Member::new(newcomer_name(members), 1));
    let grown_table = HashTable::new(algorithm, &grown)?;
    let mut grown_up = all_up.clone();
    grown_up.push(true);
    let grown_selector = HashSelector::new(&grown_table, &grown_up);
    let n = members.len();
    let active: Vec<Member> = members
        .iter()
        .enumerate()
        .filter(|&(i, _)| !drains(i))
        .map(|(_, m)| m.clone())
        .collect();
    let add = Addition {
        moved: full.moved_fraction(&grown_selector, |i| (i < n).then_some(i)),
        optimal: 1.0 / (total_weight(&active) + 1) as f64,
    };

    Ok(ChurnReport {
        algorithm: algorithm.name().to_string(),
        table_size: table.size(),
        build_ms: build.as_secs_f64() * 1e3,
        backends,
        remove,
        add,
        slow_start_seconds: None,
    })
}

/// A name no configured backend has, for the hypothetical newcomer.
fn newcomer_name(members: &[Member]) -> String {
    let mut name = String::from("churn-newcomer");
    while members.iter().any(|m| m.name == name) {
        name.push('+');
    }
    name
}

impl ChurnReport {
    /// The human-readable table printed by `affinity --churn`.
    pub fn render(&self) -> String {
        let width = self
            .backends
            .iter()
            .map(|b| b.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("backend".len());
        let mut out = String::new();
        let size_label = if self.algorithm == "maglev" {
            "table size"
        } else {
            "ring points"
        };
        let _ = writeln!(
            out,
            "algorithm {}, {} {}, {} backends, built in {:.3} ms",
            self.algorithm,
            size_label,
            self.table_size,
            self.backends.len(),
            self.build_ms
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {:>8}  {:>14}  {:>8}  {:>6}",
            "backend", "weight", "share", "moved if down", "optimal", "ratio"
        );
        for (b, r) in self.backends.iter().zip(&self.remove) {
            let _ = writeln!(
                out,
                "{:<width$}  {:>6}  {:>7.3}%  {:>13.3}%  {:>7.3}%  {:>6.3}",
                b.name,
                b.weight,
                b.share * 100.0,
                r.moved * 100.0,
                r.optimal * 100.0,
                ratio(r.moved, r.optimal)
            );
        }
        let _ = writeln!(out);
        for b in self.backends.iter().filter(|b| b.draining) {
            let _ = writeln!(
                out,
                "{} drains: out of the table; undraining it moves {:.3}% of keys back to it",
                b.name,
                b.undrain_moves.unwrap_or(0.0) * 100.0
            );
        }
        let _ = writeln!(
            out,
            "one more backend of weight 1 joins: {:.3}% of keys move, optimal {:.3}% (ratio {:.3})",
            self.add.moved * 100.0,
            self.add.optimal * 100.0,
            ratio(self.add.moved, self.add.optimal)
        );
        if let Some(seconds) = self.slow_start_seconds.filter(|s| *s > 0.0) {
            let largest = self.remove.iter().map(|r| r.optimal).fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "slow start {seconds}s: a returning, added or undrained backend takes its keys back linearly over it (the largest share, {:.3}%, at {:.3}% of keys per second)",
                largest * 100.0,
                largest * 100.0 / seconds
            );
        }
        out
    }

    /// The `--json` object, as one line.
    pub fn to_json(&self) -> String {
        // Serialising plain numbers and strings cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn ratio(moved: f64, optimal: f64) -> f64 {
    if optimal > 0.0 { moved / optimal } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::maglev::DEFAULT_TABLE_SIZE;
    use crate::balance::ring::DEFAULT_POINTS_PER_WEIGHT;

    fn pool(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(format!("server-{i}"), 1))
            .collect()
    }

    #[test]
    fn maglev_removals_move_exactly_the_optimal_share() {
        let report = churn(
            HashAlgorithm::Maglev {
                table_size: DEFAULT_TABLE_SIZE,
            },
            &pool(5),
            &[],
        )
        .unwrap();
        assert_eq!(report.table_size, DEFAULT_TABLE_SIZE);
        assert!((report.backends.iter().map(|b| b.share).sum::<f64>() - 1.0).abs() < 1e-9);
        for r in &report.remove {
            assert_eq!(r.moved, r.optimal, "{r:?}");
            assert!((r.optimal - 0.2).abs() < 1e-4);
        }
        assert!((report.add.optimal - 1.0 / 6.0).abs() < 1e-12);
        assert!(report.add.moved >= report.add.optimal);
    }

    #[test]
    fn a_draining_backend_starts_out_of_the_table_and_undraining_moves_its_share_back() {
        for algorithm in [
            HashAlgorithm::Maglev {
                table_size: DEFAULT_TABLE_SIZE,
            },
            HashAlgorithm::RingHash {
                points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
            },
        ] {
            let all = churn(algorithm, &pool(4), &[]).unwrap();
            let report = churn(algorithm, &pool(4), &[false, true]).unwrap();
            assert_eq!(report.backends[1].share, 0.0);
            assert!(report.backends[1].draining);
            let back = report.backends[1].undrain_moves.unwrap();
            assert!((back - all.backends[1].share).abs() < 1e-9, "{back}");
            assert_eq!(report.remove[1].moved, 0.0);
            // The others' removals are counted from the table without it.
            assert!((report.backends.iter().map(|b| b.share).sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(report.render().contains("server-1 drains"));
            assert!(report.backends[0].undrain_moves.is_none());
        }
    }

    #[test]
    fn ring_additions_move_only_the_newcomers_share() {
        let algorithm = HashAlgorithm::RingHash {
            points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
        };
        let report = churn(algorithm, &pool(8), &[]).unwrap();
        for r in &report.remove {
            assert!((r.moved - r.optimal).abs() < 1e-12);
        }
        // The newcomer's actual share is what moves; it is near the optimum.
        assert!((report.add.moved - report.add.optimal).abs() < 0.03);
    }

    #[test]
    fn the_json_report_has_every_documented_field() {
        let report = churn(HashAlgorithm::Maglev { table_size: 101 }, &pool(3), &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for field in [
            "algorithm",
            "table_size",
            "build_ms",
            "backends",
            "remove",
            "add",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["algorithm"], "maglev");
        assert_eq!(v["backends"][0]["name"], "server-0");
        assert!(v["add"]["moved"].is_number() && v["add"]["optimal"].is_number());
        assert!(v["remove"][2]["moved"].is_number());
    }

    #[test]
    fn the_newcomer_never_collides_with_a_configured_name() {
        let members = vec![
            Member::new("churn-newcomer", 1),
            Member::new("churn-newcomer+", 1),
        ];
        assert_eq!(newcomer_name(&members), "churn-newcomer++");
    }
}
