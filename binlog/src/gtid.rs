//! MariaDB GTIDs (`domain-server-seq`) and GTID positions (one GTID per
//! domain, as `gtid_binlog_pos`, `gtid_slave_pos` or a replica's
//! `@slave_connect_state`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A MariaDB global transaction id: replication domain, originating server,
/// sequence number. Displayed and parsed as `domain-server-seq`.
///
/// The derived ordering is (domain, server, seq), useful for sorting only;
/// "is this transaction newer" is a per-domain question of `seq` (with
/// `gtid_strict_mode`, seq_no grows strictly within a domain whatever the
/// server), see [`GtidPos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gtid {
    /// Replication domain (`gtid_domain_id`).
    pub domain: u32,
    /// Server that committed it first (`server_id`).
    pub server: u32,
    /// Sequence number within the domain.
    pub seq: u64,
}

impl Gtid {
    /// `domain-server-seq`.
    pub const fn new(domain: u32, server: u32, seq: u64) -> Self {
        Gtid {
            domain,
            server,
            seq,
        }
    }
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

fn bad(text: &str, reason: &'static str) -> Error {
    Error::BadGtidText {
        text: text.to_owned(),
        reason,
    }
}

fn number<T: FromStr>(part: &str, whole: &str) -> Result<T> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(whole, "each part must be a decimal number"));
    }
    part.parse()
        .map_err(|_| bad(whole, "number out of range (u32-u32-u64)"))
}

impl FromStr for Gtid {
    type Err = Error;

    /// Parses `domain-server-seq` (surrounding ASCII whitespace ignored).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim_ascii();
        let mut parts = t.split('-');
        let (Some(d), Some(sv), Some(q), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(s, "expected domain-server-seq"));
        };
        Ok(Gtid {
            domain: number(d, s)?,
            server: number(sv, s)?,
            seq: number(q, s)?,
        })
    }
}

/// A GTID position: at most one GTID per replication domain, the last one
/// applied (or logged) in that domain. Text form: `0-1-5,1-2-3` (sorted by
/// domain when displayed); the empty string is the empty position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GtidPos {
    domains: BTreeMap<u32, Gtid>,
}

impl GtidPos {
    /// The empty position.
    pub fn new() -> Self {
        Self::default()
    }

    /// From a list where a domain may repeat (a GTID_LIST event, a binlog
    /// state): the last GTID of each domain wins.
    pub fn from_gtids<I: IntoIterator<Item = Gtid>>(gtids: I) -> Self {
        let mut p = Self::new();
        for g in gtids {
            p.set(g);
        }
        p
    }

    /// The position's GTID for `domain`.
    pub fn get(&self, domain: u32) -> Option<Gtid> {
        self.domains.get(&domain).copied()
    }

    /// The GTIDs, by domain.
    pub fn iter(&self) -> impl Iterator<Item = Gtid> + '_ {
        self.domains.values().copied()
    }

    /// Number of domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// True when no domain has a GTID.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Does this position include `g`, i.e. has its domain reached `g.seq`?
    /// (Per domain, by seq_no alone: the server id does not order GTIDs.)
    pub fn contains(&self, g: &Gtid) -> bool {
        self.domains
            .get(&g.domain)
            .is_some_and(|cur| cur.seq >= g.seq)
    }

    /// Does this position include every GTID of `other`?
    pub fn includes(&self, other: &GtidPos) -> bool {
        other.iter().all(|g| self.contains(&g))
    }

    /// Records `g` as its domain's GTID, whatever was there; returns the
    /// previous one.
    pub fn set(&mut self, g: Gtid) -> Option<Gtid> {
        self.domains.insert(g.domain, g)
    }

    /// Moves `g`'s domain forward to `g`, strictly: fails (and changes
    /// nothing) if the domain already has a GTID with seq_no >= `g.seq`,
    /// as `gtid_strict_mode` would.
    pub fn advance(&mut self, g: Gtid) -> Result<()> {
        if let Some(cur) = self.domains.get(&g.domain)
            && cur.seq >= g.seq
        {
            return Err(Error::GtidOutOfOrder {
                domain: g.domain,
                current: *cur,
                new: g,
            });
        }
        self.domains.insert(g.domain, g);
        Ok(())
    }

    /// Forgets a domain; returns its GTID.
    pub fn remove(&mut self, domain: u32) -> Option<Gtid> {
        self.domains.remove(&domain)
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for g in self.domains.values() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidPos {
    type Err = Error;

    /// Parses `d-s-n,d-s-n,...`; empty (or blank) text is the empty
    /// position. A domain may appear once only (MariaDB rejects duplicates
    /// in a connect state).
    fn from_str(s: &str) -> Result<Self> {
        let mut p = GtidPos::new();
        if s.trim_ascii().is_empty() {
            return Ok(p);
        }
        for part in s.split(',') {
            let g: Gtid = part.parse().map_err(|e| match e {
                Error::BadGtidText { reason, .. } => bad(s, reason),
                other => other,
            })?;
            if p.set(g).is_some() {
                return Err(bad(s, "a domain appears twice"));
            }
        }
        Ok(p)
    }
}

impl FromIterator<Gtid> for GtidPos {
    fn from_iter<I: IntoIterator<Item = Gtid>>(iter: I) -> Self {
        Self::from_gtids(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_text() {
        let g: Gtid = "0-1-5".parse().unwrap();
        assert_eq!(g, Gtid::new(0, 1, 5));
        assert_eq!(g.to_string(), "0-1-5");
        let big: Gtid = " 4294967295-4294967295-18446744073709551615 "
            .parse()
            .unwrap();
        assert_eq!(big, Gtid::new(u32::MAX, u32::MAX, u64::MAX));
        for bad in [
            "",
            "0-1",
            "0-1-2-3",
            "a-1-2",
            "0--1",
            "-0-1-2",
            "0-1-+2",
            "4294967296-1-1",
            "0-1-18446744073709551616",
            "0 -1-2",
            "0,1,2",
        ] {
            assert!(
                matches!(bad.parse::<Gtid>(), Err(Error::BadGtidText { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pos_text() {
        let p: GtidPos = "1-2-3,0-1-5".parse().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.to_string(), "0-1-5,1-2-3");
        assert_eq!(p.get(1), Some(Gtid::new(1, 2, 3)));
        assert_eq!(p.get(7), None);
        let empty: GtidPos = "".parse().unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.to_string(), "");
        assert!(" ".parse::<GtidPos>().unwrap().is_empty());
        let spaced: GtidPos = "0-1-5, 1-2-3".parse().unwrap();
        assert_eq!(spaced, p);
        for bad in ["0-1-5,", ",0-1-5", "0-1-5,,1-2-3", "0-1-5,0-2-6", "x"] {
            assert!(bad.parse::<GtidPos>().is_err(), "{bad:?}");
        }
        let round: GtidPos = p.to_string().parse().unwrap();
        assert_eq!(round, p);
    }

    #[test]
    fn containment() {
        let p: GtidPos = "0-1-5,1-2-3".parse().unwrap();
        assert!(p.contains(&Gtid::new(0, 1, 5)));
        assert!(p.contains(&Gtid::new(0, 1, 4)));
        // Another server in the same domain: seq_no decides.
        assert!(p.contains(&Gtid::new(0, 9, 2)));
        assert!(!p.contains(&Gtid::new(0, 1, 6)));
        assert!(!p.contains(&Gtid::new(2, 1, 1)));
        assert!(p.includes(&"0-1-4".parse().unwrap()));
        assert!(p.includes(&GtidPos::new()));
        assert!(p.includes(&p));
        assert!(!p.includes(&"0-1-4,2-1-1".parse().unwrap()));
        assert!(!GtidPos::new().includes(&p));
    }

    #[test]
    fn advance_is_strict() {
        let mut p = GtidPos::new();
        p.advance(Gtid::new(0, 1, 1)).unwrap();
        p.advance(Gtid::new(0, 2, 2)).unwrap();
        p.advance(Gtid::new(3, 1, 1)).unwrap();
        let before = p.clone();
        let err = p.advance(Gtid::new(0, 1, 2)).unwrap_err();
        assert!(matches!(err, Error::GtidOutOfOrder { domain: 0, .. }));
        assert!(p.advance(Gtid::new(0, 1, 1)).is_err());
        assert_eq!(p, before);
        assert_eq!(p.to_string(), "0-2-2,3-1-1");
        assert_eq!(p.set(Gtid::new(0, 1, 1)), Some(Gtid::new(0, 2, 2)));
        assert_eq!(p.remove(3), Some(Gtid::new(3, 1, 1)));
        assert_eq!(p.to_string(), "0-1-1");
    }

    #[test]
    fn from_list_keeps_last_per_domain() {
        let p = GtidPos::from_gtids([Gtid::new(0, 1, 10), Gtid::new(0, 2, 12), Gtid::new(1, 1, 3)]);
        assert_eq!(p.to_string(), "0-2-12,1-1-3");
        let q: GtidPos = p.iter().collect();
        assert_eq!(p, q);
    }
}
