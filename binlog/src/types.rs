//! Event type codes and header flags (MariaDB 10.11's `Log_event_type` and
//! `LOG_EVENT_*_F`).

use std::fmt;

/// An event type code. A newtype rather than an enum so that unknown codes
/// pass through untouched (the binlog server relays bytes it need not
/// understand).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(pub u8);

impl EventType {
    /// Never written to a binlog.
    pub const UNKNOWN: Self = Self(0);
    /// MySQL 3.23..4.x start event.
    pub const START_V3: Self = Self(1);
    /// A statement (DDL, BEGIN, COMMIT, XA END, SAVEPOINT, ...).
    pub const QUERY: Self = Self(2);
    /// Written when the server stops.
    pub const STOP: Self = Self(3);
    /// Names the next binlog file.
    pub const ROTATE: Self = Self(4);
    /// LAST_INSERT_ID / INSERT_ID for the next statement.
    pub const INTVAR: Self = Self(5);
    /// Old LOAD DATA.
    pub const LOAD: Self = Self(6);
    /// Never written.
    pub const SLAVE: Self = Self(7);
    /// Old LOAD DATA.
    pub const CREATE_FILE: Self = Self(8);
    /// LOAD DATA block.
    pub const APPEND_BLOCK: Self = Self(9);
    /// Old LOAD DATA.
    pub const EXEC_LOAD: Self = Self(10);
    /// LOAD DATA cleanup.
    pub const DELETE_FILE: Self = Self(11);
    /// Old LOAD DATA.
    pub const NEW_LOAD: Self = Self(12);
    /// RAND() seeds for the next statement.
    pub const RAND: Self = Self(13);
    /// A user variable used by the next statement.
    pub const USER_VAR: Self = Self(14);
    /// First event of every binlog file: describes the format.
    pub const FORMAT_DESCRIPTION: Self = Self(15);
    /// Commit of a transactional (InnoDB) event group.
    pub const XID: Self = Self(16);
    /// LOAD DATA first block.
    pub const BEGIN_LOAD_QUERY: Self = Self(17);
    /// LOAD DATA statement.
    pub const EXECUTE_LOAD_QUERY: Self = Self(18);
    /// Maps a table id to a table for the following row events.
    pub const TABLE_MAP: Self = Self(19);
    /// Obsolete (5.1.0 - 5.1.15).
    pub const PRE_GA_WRITE_ROWS: Self = Self(20);
    /// Obsolete (5.1.0 - 5.1.15).
    pub const PRE_GA_UPDATE_ROWS: Self = Self(21);
    /// Obsolete (5.1.0 - 5.1.15).
    pub const PRE_GA_DELETE_ROWS: Self = Self(22);
    /// Row insert, version 1: what MariaDB 10.11 writes.
    pub const WRITE_ROWS_V1: Self = Self(23);
    /// Row update, version 1: what MariaDB 10.11 writes.
    pub const UPDATE_ROWS_V1: Self = Self(24);
    /// Row delete, version 1: what MariaDB 10.11 writes.
    pub const DELETE_ROWS_V1: Self = Self(25);
    /// Something out of the ordinary happened on the master.
    pub const INCIDENT: Self = Self(26);
    /// Sent (never written) by a master while idle.
    pub const HEARTBEAT: Self = Self(27);
    /// MySQL 5.6 ignorable event.
    pub const IGNORABLE: Self = Self(28);
    /// MySQL 5.6 rows query event.
    pub const ROWS_QUERY: Self = Self(29);
    /// Row insert, version 2 (MySQL 5.6.6+).
    pub const WRITE_ROWS_V2: Self = Self(30);
    /// Row update, version 2 (MySQL 5.6.6+).
    pub const UPDATE_ROWS_V2: Self = Self(31);
    /// Row delete, version 2 (MySQL 5.6.6+).
    pub const DELETE_ROWS_V2: Self = Self(32);
    /// MySQL GTID (ignored by MariaDB).
    pub const MYSQL_GTID: Self = Self(33);
    /// MySQL anonymous GTID (ignored by MariaDB).
    pub const MYSQL_ANONYMOUS_GTID: Self = Self(34);
    /// MySQL previous GTIDs (ignored by MariaDB).
    pub const MYSQL_PREVIOUS_GTIDS: Self = Self(35);
    /// MySQL 5.7 (ignored by MariaDB).
    pub const TRANSACTION_CONTEXT: Self = Self(36);
    /// MySQL 5.7 (ignored by MariaDB).
    pub const VIEW_CHANGE: Self = Self(37);
    /// Ends an `XA PREPARE` event group (also `XA COMMIT ... ONE PHASE` in
    /// some versions).
    pub const XA_PREPARE: Self = Self(38);
    /// MariaDB: the statement text of the following row events.
    pub const ANNOTATE_ROWS: Self = Self(0xa0);
    /// MariaDB: XA crash-recovery checkpoint (names a binlog file).
    pub const BINLOG_CHECKPOINT: Self = Self(0xa1);
    /// MariaDB: starts every event group; carries the GTID.
    pub const GTID: Self = Self(0xa2);
    /// MariaDB: the binlog state (last GTID per domain and server) at the
    /// start of a binlog file.
    pub const GTID_LIST: Self = Self(0xa3);
    /// MariaDB: the rest of the file is encrypted.
    pub const START_ENCRYPTION: Self = Self(0xa4);
    /// MariaDB: compressed QUERY.
    pub const QUERY_COMPRESSED: Self = Self(0xa5);
    /// MariaDB: compressed WRITE_ROWS v1.
    pub const WRITE_ROWS_COMPRESSED_V1: Self = Self(0xa6);
    /// MariaDB: compressed UPDATE_ROWS v1.
    pub const UPDATE_ROWS_COMPRESSED_V1: Self = Self(0xa7);
    /// MariaDB: compressed DELETE_ROWS v1.
    pub const DELETE_ROWS_COMPRESSED_V1: Self = Self(0xa8);
    /// MariaDB: compressed WRITE_ROWS v2.
    pub const WRITE_ROWS_COMPRESSED_V2: Self = Self(0xa9);
    /// MariaDB: compressed UPDATE_ROWS v2.
    pub const UPDATE_ROWS_COMPRESSED_V2: Self = Self(0xaa);
    /// MariaDB: compressed DELETE_ROWS v2.
    pub const DELETE_ROWS_COMPRESSED_V2: Self = Self(0xab);

    /// Number of types a MariaDB 10.11 FORMAT_DESCRIPTION event describes
    /// (1..=171, i.e. up to DELETE_ROWS_COMPRESSED_V2).
    pub const MARIADB_TYPE_COUNT: usize = 171;

    /// The type code.
    pub const fn code(self) -> u8 {
        self.0
    }

    /// MariaDB's name for the type, if it is one MariaDB 10.11 defines.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "UNKNOWN",
            1 => "START_V3",
            2 => "QUERY",
            3 => "STOP",
            4 => "ROTATE",
            5 => "INTVAR",
            6 => "LOAD",
            7 => "SLAVE",
            8 => "CREATE_FILE",
            9 => "APPEND_BLOCK",
            10 => "EXEC_LOAD",
            11 => "DELETE_FILE",
            12 => "NEW_LOAD",
            13 => "RAND",
            14 => "USER_VAR",
            15 => "FORMAT_DESCRIPTION",
            16 => "XID",
            17 => "BEGIN_LOAD_QUERY",
            18 => "EXECUTE_LOAD_QUERY",
            19 => "TABLE_MAP",
            20 => "PRE_GA_WRITE_ROWS",
            21 => "PRE_GA_UPDATE_ROWS",
            22 => "PRE_GA_DELETE_ROWS",
            23 => "WRITE_ROWS_V1",
            24 => "UPDATE_ROWS_V1",
            25 => "DELETE_ROWS_V1",
            26 => "INCIDENT",
            27 => "HEARTBEAT",
            28 => "IGNORABLE",
            29 => "ROWS_QUERY",
            30 => "WRITE_ROWS_V2",
            31 => "UPDATE_ROWS_V2",
            32 => "DELETE_ROWS_V2",
            33 => "MYSQL_GTID",
            34 => "MYSQL_ANONYMOUS_GTID",
            35 => "MYSQL_PREVIOUS_GTIDS",
            36 => "TRANSACTION_CONTEXT",
            37 => "VIEW_CHANGE",
            38 => "XA_PREPARE",
            0xa0 => "ANNOTATE_ROWS",
            0xa1 => "BINLOG_CHECKPOINT",
            0xa2 => "GTID",
            0xa3 => "GTID_LIST",
            0xa4 => "START_ENCRYPTION",
            0xa5 => "QUERY_COMPRESSED",
            0xa6 => "WRITE_ROWS_COMPRESSED_V1",
            0xa7 => "UPDATE_ROWS_COMPRESSED_V1",
            0xa8 => "DELETE_ROWS_COMPRESSED_V1",
            0xa9 => "WRITE_ROWS_COMPRESSED_V2",
            0xaa => "UPDATE_ROWS_COMPRESSED_V2",
            0xab => "DELETE_ROWS_COMPRESSED_V2",
            _ => return None,
        })
    }

    /// A row event (write/update/delete; v1, v2 or compressed). Their
    /// post-header starts with a 6-byte table id and a u16 of flags.
    pub const fn is_rows(self) -> bool {
        matches!(self.0, 23..=25 | 30..=32 | 0xa6..=0xab)
    }

    /// MariaDB's `Log_event::is_group_event`: false for the events that
    /// never belong to an event group (they describe the file or the
    /// connection): START_V3, STOP, ROTATE, SLAVE, FORMAT_DESCRIPTION,
    /// INCIDENT, HEARTBEAT, BINLOG_CHECKPOINT, GTID_LIST, START_ENCRYPTION.
    pub const fn is_group_event(self) -> bool {
        !matches!(self.0, 1 | 3 | 4 | 7 | 15 | 26 | 27 | 0xa1 | 0xa3 | 0xa4)
    }

    /// MariaDB's `Log_event::is_part_of_group(type)`: in a standalone group
    /// these events precede the one statement and do not end the group
    /// (GTID, INTVAR, RAND, USER_VAR, TABLE_MAP, ANNOTATE_ROWS).
    pub const fn is_statement_prefix(self) -> bool {
        matches!(self.0, 0xa2 | 5 | 13 | 14 | 19 | 0xa0)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "UNKNOWN_TYPE({})", self.0),
        }
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self, self.0)
    }
}

impl From<u8> for EventType {
    fn from(code: u8) -> Self {
        Self(code)
    }
}

/// Header flag bits (the u16 at offset 17 of every event).
pub mod flags {
    /// Set in a binlog file's FORMAT_DESCRIPTION while the file is open;
    /// cleared on a clean close. A master clears it before sending.
    pub const LOG_EVENT_BINLOG_IN_USE_F: u16 = 0x1;
    /// The statement depends on the thread (temporary tables).
    pub const LOG_EVENT_THREAD_SPECIFIC_F: u16 = 0x4;
    /// Do not generate `USE db` before the statement.
    pub const LOG_EVENT_SUPPRESS_USE_F: u16 = 0x8;
    /// An event made up by a master for the replica (first ROTATE, fake
    /// GTID_LIST): it must not move the replica's master position.
    pub const LOG_EVENT_ARTIFICIAL_F: u16 = 0x20;
    /// Written by a replica's IO thread to its relay log.
    pub const LOG_EVENT_RELAY_LOG_F: u16 = 0x40;
    /// A replica that does not know the type may skip the event.
    pub const LOG_EVENT_IGNORABLE_F: u16 = 0x80;
    /// Set by a MariaDB semi-sync replica on events carrying its own
    /// server_id that it must accept (it discarded them in recovery).
    pub const LOG_EVENT_ACCEPT_OWN_F: u16 = 0x4000;
    /// Set by `@@skip_replication`.
    pub const LOG_EVENT_SKIP_REPLICATION_F: u16 = 0x8000;
}

/// Flag bits of a row event's post-header (u16 at body offset 6).
pub mod rows_flags {
    /// Last row event of its statement.
    pub const STMT_END_F: u16 = 0x1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_display() {
        assert_eq!(EventType::GTID.to_string(), "GTID");
        assert_eq!(EventType(0xa0).name(), Some("ANNOTATE_ROWS"));
        assert_eq!(EventType(200).name(), None);
        assert_eq!(EventType(200).to_string(), "UNKNOWN_TYPE(200)");
        assert_eq!(format!("{:?}", EventType::XID), "XID(16)");
        assert_eq!(EventType::from(27), EventType::HEARTBEAT);
        assert_eq!(EventType::QUERY.code(), 2);
    }

    #[test]
    fn classes() {
        for t in [
            EventType::ROTATE,
            EventType::FORMAT_DESCRIPTION,
            EventType::HEARTBEAT,
            EventType::GTID_LIST,
            EventType::BINLOG_CHECKPOINT,
            EventType::STOP,
            EventType::START_ENCRYPTION,
            EventType::INCIDENT,
        ] {
            assert!(!t.is_group_event(), "{t}");
        }
        for t in [
            EventType::QUERY,
            EventType::XID,
            EventType::GTID,
            EventType::TABLE_MAP,
            EventType::ANNOTATE_ROWS,
            EventType::WRITE_ROWS_V1,
            EventType::XA_PREPARE,
            EventType(200),
        ] {
            assert!(t.is_group_event(), "{t}");
        }
        let rows: Vec<u8> = (0..=255u8).filter(|&c| EventType(c).is_rows()).collect();
        assert_eq!(rows, [23, 24, 25, 30, 31, 32, 166, 167, 168, 169, 170, 171]);
        let prefix: Vec<u8> = (0..=255u8)
            .filter(|&c| EventType(c).is_statement_prefix())
            .collect();
        assert_eq!(prefix, [5, 13, 14, 19, 0xa0, 0xa2]);
    }
}
