//! Verification of stored events (pure): every chain is re-hashed and re-linked, its end
//! signature checked, and, over a host's events, the host sequence checked for holes.
//!
//! What each finding means:
//! - [`Problem::Edited`]: an event's content no longer matches its hash (a field was changed).
//! - [`Problem::Missing`]: sequence numbers of a chain are absent (events deleted).
//! - [`Problem::BrokenLink`]: an event does not point at the hash of the event before it
//!   (events replaced, reordered by renumbering, or spliced from elsewhere).
//! - [`Problem::Reordered`]: timestamps go backwards along a chain.
//! - [`Problem::Conflict`]: two different events claim the same place in a chain.
//! - [`Problem::BadSignature`]: a chain's final event is unsigned or its signature does not
//!   verify with the host's public key (the end was forged or the key is not this host's).
//! - [`Problem::HostGap`]: host sequence numbers are absent between events of the host
//!   (whole chains or their tails deleted), when the check covers a complete range.
//! - [`Problem::Truncated`]: a chain has no final event although later events of its host exist
//!   after a restart closed every open chain — its end was deleted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

use crate::chain::{event_hash, PublicKey, GENESIS};
use crate::event::Event;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Content does not match the stored hash.
    Edited {
        /// Chain.
        session: String,
        /// Position.
        seq: u64,
        /// The event.
        event_id: String,
    },
    /// Positions `from..=to` of a chain are absent.
    Missing {
        /// Chain.
        session: String,
        /// First absent position.
        from: u64,
        /// Last absent position.
        to: u64,
    },
    /// The event does not link to its predecessor.
    BrokenLink {
        /// Chain.
        session: String,
        /// Position of the event whose `prev_hash` is wrong.
        seq: u64,
    },
    /// Time goes backwards at this position.
    Reordered {
        /// Chain.
        session: String,
        /// Position.
        seq: u64,
    },
    /// Two different events at one position.
    Conflict {
        /// Chain.
        session: String,
        /// Position.
        seq: u64,
    },
    /// The final event's signature is missing or wrong.
    BadSignature {
        /// Chain.
        session: String,
        /// Position.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// Host sequence numbers `from..=to` of `host` are absent.
    HostGap {
        /// Host.
        host: String,
        /// First absent.
        from: u64,
        /// Last absent.
        to: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Edited {
                session,
                seq,
                event_id,
            } => write!(
                f,
                "EDITED   session {session} seq {seq} (event {event_id}): content does not match its hash"
            ),
            Problem::Missing { session, from, to } if from == to => write!(
                f,
                "MISSING  session {session} seq {from}: event deleted"
            ),
            Problem::Missing { session, from, to } => write!(
                f,
                "MISSING  session {session} seq {from}..{to}: {} events deleted",
                to - from + 1
            ),
            Problem::BrokenLink { session, seq } => write!(
                f,
                "BROKEN   session {session} seq {seq}: does not link to seq {} (events replaced or reordered)",
                seq.saturating_sub(1)
            ),
            Problem::Reordered { session, seq } => write!(
                f,
                "REORDER  session {session} seq {seq}: timestamp earlier than seq {}",
                seq.saturating_sub(1)
            ),
            Problem::Conflict { session, seq } => write!(
                f,
                "CONFLICT session {session} seq {seq}: two different events at one position"
            ),
            Problem::BadSignature {
                session,
                seq,
                detail,
            } => write!(f, "SIGNATURE session {session} seq {seq}: {detail}"),
            Problem::HostGap { host, from, to } => write!(
                f,
                "GAP      host {host} host_seq {from}..{to}: {} events absent (whole sessions or their ends deleted)",
                to - from + 1
            ),
        }
    }
}

/// The state of one chain after verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    /// Chain.
    pub session: String,
    /// Events checked.
    pub events: usize,
    /// Whether its final, signed event is present.
    pub closed: bool,
    /// First and last timestamps (µs).
    pub first_us: i64,
    /// Last timestamp (µs).
    pub last_us: i64,
}

/// Verification outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Chains checked.
    pub chains: Vec<ChainSummary>,
    /// Events checked (identical duplicates counted once).
    pub events: usize,
    /// Identical copies of one event seen more than once (harmless: at-least-once delivery
    /// before ClickHouse merges them).
    pub duplicates: usize,
    /// What is wrong; empty when the record is intact.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What the events handed to [`verify`] are meant to be.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope {
    /// Every event of the host(s) within a host-sequence range is present (a spool, or a
    /// ClickHouse time range): holes in `host_seq` are reported.
    pub complete_hosts: bool,
}

/// Verifies `events` (any order; all events of each chain they touch). `key` checks final
/// signatures; without it signatures are reported unverifiable only if missing.
pub fn verify(events: &[Event], key: Option<&PublicKey>, scope: Scope) -> Report {
    let mut report = Report::default();
    let mut chains: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        chains.entry(&e.session_id).or_default().push(e);
    }
    for (session, mut list) in chains {
        list.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.hash.cmp(&b.hash)));
        // Identical duplicates collapse; different events at one position conflict.
        let mut uniq: Vec<&Event> = Vec::with_capacity(list.len());
        for e in list {
            if let Some(last) = uniq.last() {
                if last.seq == e.seq {
                    if *last == e {
                        report.duplicates += 1;
                    } else if !report.problems.iter().any(|p| {
                        matches!(p, Problem::Conflict { session: s, seq } if s == session && *seq == e.seq)
                    }) {
                        report.problems.push(Problem::Conflict {
                            session: session.to_owned(),
                            seq: e.seq,
                        });
                    }
                    continue;
                }
            }
            uniq.push(e);
        }
        let mut prev: Option<&Event> = None;
        for e in &uniq {
            if event_hash(e) != e.hash {
                report.problems.push(Problem::Edited {
                    session: session.to_owned(),
                    seq: e.seq,
                    event_id: e.event_id.to_string(),
                });
            }
            let expected_from = prev.map_or(0, |p| p.seq + 1);
            if e.seq > expected_from {
                report.problems.push(Problem::Missing {
                    session: session.to_owned(),
                    from: expected_from,
                    to: e.seq - 1,
                });
            } else {
                let want = prev.map_or(GENESIS, |p| p.hash.as_str());
                if e.prev_hash != want {
                    report.problems.push(Problem::BrokenLink {
                        session: session.to_owned(),
                        seq: e.seq,
                    });
                }
            }
            if let Some(p) = prev {
                if e.ts_us < p.ts_us {
                    report.problems.push(Problem::Reordered {
                        session: session.to_owned(),
                        seq: e.seq,
                    });
                }
            }
            if e.kind.is_final() || !e.signature.is_empty() {
                let detail = if e.signature.is_empty() {
                    Some("final event is not signed".to_owned())
                } else if !e.kind.is_final() {
                    Some("a signature on an event that does not end its chain".to_owned())
                } else if let Some(k) = key {
                    if !k.verify_hash(&e.hash, &e.signature) {
                        Some(format!(
                            "signature does not verify with key {} (signed by key {})",
                            k.key_id(),
                            if e.key_id.is_empty() { "?" } else { &e.key_id }
                        ))
                    } else {
                        None
                    }
                } else {
                    None
                };
                if let Some(detail) = detail {
                    report.problems.push(Problem::BadSignature {
                        session: session.to_owned(),
                        seq: e.seq,
                        detail,
                    });
                }
            }
            prev = Some(e);
        }
        if let Some(last) = uniq.last() {
            report.chains.push(ChainSummary {
                session: session.to_owned(),
                events: uniq.len(),
                closed: last.kind.is_final(),
                first_us: uniq.first().map_or(0, |e| e.ts_us),
                last_us: last.ts_us,
            });
        }
        report.events += uniq.len();
    }
    if scope.complete_hosts {
        let mut by_host: HashMap<&str, Vec<u64>> = HashMap::new();
        for e in events {
            by_host.entry(&e.host).or_default().push(e.host_seq);
        }
        let mut hosts: Vec<_> = by_host.into_iter().collect();
        hosts.sort();
        for (host, mut seqs) in hosts {
            seqs.sort_unstable();
            seqs.dedup();
            for w in seqs.windows(2) {
                if w[1] > w[0] + 1 {
                    report.problems.push(Problem::HostGap {
                        host: host.to_owned(),
                        from: w[0] + 1,
                        to: w[1] - 1,
                    });
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Chainer, HostKey};
    use crate::event::EventKind;

    fn sample(key: &HostKey) -> Vec<Event> {
        let mut c = Chainer::default();
        let mut out = Vec::new();
        let kinds = [
            ("s1", EventKind::Login),
            ("s1", EventKind::Query),
            ("s2", EventKind::Login),
            ("s1", EventKind::Decision),
            ("s1", EventKind::Result),
            ("s2", EventKind::SessionEnd),
            ("s1", EventKind::SessionEnd),
        ];
        for (i, (s, k)) in kinds.into_iter().enumerate() {
            let mut e = Event::new(k, s);
            e.ts_us = 1_000_000 + i as i64;
            c.seal(&mut e, "h", key);
            out.push(e);
        }
        out
    }

    fn problems(events: &[Event], key: &HostKey) -> Vec<String> {
        verify(
            events,
            Some(&key.public()),
            Scope {
                complete_hosts: true,
            },
        )
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    #[test]
    fn intact_chains_verify() {
        let key = HostKey::generate();
        let events = sample(&key);
        let r = verify(
            &events,
            Some(&key.public()),
            Scope {
                complete_hosts: true,
            },
        );
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.events, 7);
        assert!(r.chains.iter().all(|c| c.closed));
        // Duplicates (at-least-once delivery) are harmless.
        let mut dup = events.clone();
        dup.push(events[1].clone());
        let r = verify(
            &dup,
            Some(&key.public()),
            Scope {
                complete_hosts: true,
            },
        );
        assert!(r.ok() && r.duplicates == 1);
    }

    #[test]
    fn edits_deletions_reorders_and_forged_ends_are_named() {
        let key = HostKey::generate();
        let events = sample(&key);

        let mut edited = events.clone();
        edited[3].rule_id = "allow-everything".into();
        assert_eq!(
            problems(&edited, &key),
            vec![format!(
                "EDITED   session s1 seq 2 (event {}): content does not match its hash",
                events[3].event_id
            )]
        );

        let mut deleted = events.clone();
        deleted.remove(3);
        let p = problems(&deleted, &key);
        assert!(
            p.contains(&"MISSING  session s1 seq 2: event deleted".to_owned()),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("GAP      host h host_seq 3..3")),
            "{p:?}"
        );

        // Reorder: swap the positions (and host positions) of two events, re-hashing them so
        // each is self-consistent: the links break.
        let mut swapped = events.clone();
        let (a, b) = (1, 3);
        let (sa, sb) = (swapped[a].seq, swapped[b].seq);
        swapped[a].seq = sb;
        swapped[b].seq = sa;
        swapped[a].hash = event_hash(&swapped[a]);
        swapped[b].hash = event_hash(&swapped[b]);
        let p = problems(&swapped, &key);
        assert!(
            p.iter().any(|l| l.starts_with("BROKEN   session s1")),
            "{p:?}"
        );

        // Whole session deleted: only the host sequence shows it.
        let without_s2: Vec<Event> = events
            .iter()
            .filter(|e| e.session_id != "s2")
            .cloned()
            .collect();
        let p = problems(&without_s2, &key);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|l| l.starts_with("GAP")), "{p:?}");

        // Tail deleted and a forged end appended without the key.
        let mut forged = events.clone();
        let last = forged.len() - 1;
        forged[last].reason = "forged".into();
        forged[last].hash = event_hash(&forged[last]);
        let p = problems(&forged, &key);
        assert!(
            p.iter()
                .any(|l| l.starts_with("SIGNATURE session s1 seq 4")),
            "{p:?}"
        );

        // Time going backwards along a chain.
        let mut back = events.clone();
        back[4].ts_us = 0;
        back[4].hash = event_hash(&back[4]);
        let p = problems(&back, &key);
        assert!(
            p.iter().any(|l| l.starts_with("REORDER  session s1 seq 3")),
            "{p:?}"
        );
    }
}
