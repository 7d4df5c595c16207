//! Building events from scratch: what a replication master sends that is
//! not in any binlog (the artificial ROTATE, a FORMAT_DESCRIPTION,
//! HEARTBEATs, a GTID_LIST), plus GTID / QUERY / XID events for tests and
//! tools.

use crate::body::{
    GtidEvent, GtidListEvent, MARIADB_10_11_POST_HEADER_LENGTHS, QueryEvent, RotateEvent,
    SERVER_VERSION_LEN, XidEvent,
};
use crate::checksum::{Checksum, crc32};
use crate::error::{Error, Result};
use crate::flags::LOG_EVENT_ARTIFICIAL_F;
use crate::gtid::Gtid;
use crate::header::{EventHeader, HEADER_LEN};
use crate::types::EventType;

/// The header fields a builder chooses (event_size is computed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpec {
    /// Header timestamp.
    pub timestamp: u32,
    /// Event type.
    pub event_type: EventType,
    /// Header server_id.
    pub server_id: u32,
    /// Header log_pos.
    pub log_pos: u32,
    /// Header flags.
    pub flags: u16,
}

/// Header + body (+ CRC32 of both when `checksum` is CRC32).
pub fn build_event(spec: &EventSpec, body: &[u8], checksum: Checksum) -> Result<Vec<u8>> {
    let total = HEADER_LEN
        .checked_add(body.len())
        .and_then(|n| n.checked_add(checksum.trailer_len()))
        .ok_or(Error::TooLarge("event over 4 GiB"))?;
    let event_size = u32::try_from(total).map_err(|_| Error::TooLarge("event over 4 GiB"))?;
    let header = EventHeader {
        timestamp: spec.timestamp,
        event_type: spec.event_type,
        server_id: spec.server_id,
        event_size,
        log_pos: spec.log_pos,
        flags: spec.flags,
    };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(body);
    if checksum == Checksum::Crc32 {
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    Ok(out)
}

/// The artificial ROTATE a master sends first in a dump: timestamp 0, our
/// server_id, log_pos 0, `LOG_EVENT_ARTIFICIAL_F`; body = `position` (where
/// the replica's reading starts in `file_name`, usually 4) and the name.
pub fn artificial_rotate(
    server_id: u32,
    position: u64,
    file_name: &str,
    checksum: Checksum,
) -> Result<Vec<u8>> {
    let body = RotateEvent {
        position,
        file_name,
    }
    .encode_body();
    build_event(
        &EventSpec {
            timestamp: 0,
            event_type: EventType::ROTATE,
            server_id,
            log_pos: 0,
            flags: LOG_EVENT_ARTIFICIAL_F,
        },
        &body,
        checksum,
    )
}

/// What goes into a FORMAT_DESCRIPTION event we make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatDescriptionSpec<'a> {
    /// Server version, at most 49 bytes. A replica reads checksum support
    /// and version-specific workarounds from it: start it with MariaDB's
    /// `major.minor.patch` and include `MariaDB` (e.g.
    /// `10.11.19-MariaDB-phx`).
    pub server_version: &'a str,
    /// Header timestamp.
    pub timestamp: u32,
    /// Body create timestamp. A non-zero value tells the replica the master
    /// just (re)started, so it drops its replicated temporary tables: a
    /// master sends 0 when a replica reconnects.
    pub create_timestamp: u32,
    /// Header server_id.
    pub server_id: u32,
    /// Header log_pos: 0 to keep the replica's master position where it is
    /// (what MariaDB sends when the dump does not start at the file's
    /// beginning), else the end of this event in the (virtual) file.
    pub log_pos: u32,
    /// Header flags (MariaDB clears `LOG_EVENT_BINLOG_IN_USE_F` before
    /// sending; 0 is right).
    pub flags: u16,
    /// Checksum of the events that follow. The FDE itself always ends with
    /// a 4-byte checksum slot, filled with a valid CRC either way (as
    /// MariaDB 10.11 does).
    pub checksum: Checksum,
}

/// A MariaDB 10.11 FORMAT_DESCRIPTION event: binlog version 4, 19-byte
/// header, the post-header length table of a real 10.11 server
/// ([`MARIADB_10_11_POST_HEADER_LENGTHS`]), the checksum algorithm byte and
/// a CRC.
pub fn format_description(spec: &FormatDescriptionSpec<'_>) -> Result<Vec<u8>> {
    let ver = spec.server_version.as_bytes();
    if ver.len() >= SERVER_VERSION_LEN {
        return Err(Error::TooLarge("server version over 49 bytes"));
    }
    let mut body = Vec::with_capacity(2 + SERVER_VERSION_LEN + 4 + 1 + 171 + 1);
    body.extend_from_slice(&4u16.to_le_bytes());
    body.extend_from_slice(ver);
    body.resize(2 + SERVER_VERSION_LEN, 0);
    body.extend_from_slice(&spec.create_timestamp.to_le_bytes());
    body.push(HEADER_LEN as u8);
    body.extend_from_slice(&MARIADB_10_11_POST_HEADER_LENGTHS);
    body.push(spec.checksum.alg());
    // The checksum slot is always there, holding a valid CRC whatever the
    // algorithm byte says (as MariaDB 10.11 writes it).
    build_event(
        &EventSpec {
            timestamp: spec.timestamp,
            event_type: EventType::FORMAT_DESCRIPTION,
            server_id: spec.server_id,
            log_pos: spec.log_pos,
            flags: spec.flags,
        },
        &body,
        Checksum::Crc32,
    )
}

/// A HEARTBEAT event: timestamp 0, our server_id, log_pos = the current
/// position, body = the current file name. A position past 4 GiB goes in a
/// u64 before the name with header log_pos 0, as MariaDB does.
pub fn heartbeat(
    server_id: u32,
    log_pos: u64,
    file_name: &str,
    checksum: Checksum,
) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(8 + file_name.len());
    let header_pos = match u32::try_from(log_pos) {
        Ok(p) => p,
        Err(_) => {
            body.extend_from_slice(&log_pos.to_le_bytes());
            0
        }
    };
    body.extend_from_slice(file_name.as_bytes());
    build_event(
        &EventSpec {
            timestamp: 0,
            event_type: EventType::HEARTBEAT,
            server_id,
            log_pos: header_pos,
            flags: 0,
        },
        &body,
        checksum,
    )
}

/// A GTID_LIST event (e.g. the fake one a master sends after the FDE when a
/// replica connects by GTID). `spec.event_type` is ignored.
pub fn gtid_list(
    spec: &EventSpec,
    gtids: &[Gtid],
    list_flags: u8,
    checksum: Checksum,
) -> Result<Vec<u8>> {
    let body = GtidListEvent {
        flags: list_flags,
        gtids: gtids.to_vec(),
    }
    .encode_body()?;
    build_event(
        &EventSpec {
            event_type: EventType::GTID_LIST,
            ..*spec
        },
        &body,
        checksum,
    )
}

/// A GTID event for `gtid` (server_id in the header = `gtid.server`).
/// `spec.event_type` and `spec.server_id` are ignored.
pub fn gtid_event(spec: &EventSpec, body: &GtidEvent, checksum: Checksum) -> Result<Vec<u8>> {
    let bytes = body.encode_body()?;
    build_event(
        &EventSpec {
            event_type: EventType::GTID,
            server_id: body.server_id,
            ..*spec
        },
        &bytes,
        checksum,
    )
}

/// A QUERY event. `spec.event_type` is ignored.
pub fn query_event(spec: &EventSpec, body: &QueryEvent<'_>, checksum: Checksum) -> Result<Vec<u8>> {
    let bytes = body.encode_body()?;
    build_event(
        &EventSpec {
            event_type: EventType::QUERY,
            ..*spec
        },
        &bytes,
        checksum,
    )
}

/// An XID event. `spec.event_type` is ignored.
pub fn xid_event(spec: &EventSpec, xid: u64, checksum: Checksum) -> Result<Vec<u8>> {
    build_event(
        &EventSpec {
            event_type: EventType::XID,
            ..*spec
        },
        &XidEvent { xid }.encode_body(),
        checksum,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, EventReader, crc32};

    const FILE1: &[u8] = include_bytes!("../tests/data/fx-bin.000001");

    #[test]
    fn artificial_rotate_bytes() {
        let ev = artificial_rotate(7, 4, "phx-bin.000001", Checksum::Crc32).unwrap();
        let mut expected = vec![
            0, 0, 0, 0, // timestamp
            4, // ROTATE
            7, 0, 0, 0, // server_id
            45, 0, 0, 0, // size: 19 + 8 + 14 + 4
            0, 0, 0, 0, // log_pos
            0x20, 0, // LOG_EVENT_ARTIFICIAL_F
            4, 0, 0, 0, 0, 0, 0, 0,
        ];
        expected.extend_from_slice(b"phx-bin.000001");
        let crc = crc32(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(ev, expected);
        let e = Event::parse(&ev, Checksum::Crc32).unwrap();
        assert!(e.is_artificial());
        let r = e.rotate().unwrap();
        assert_eq!((r.position, r.file_name), (4, "phx-bin.000001"));

        let plain = artificial_rotate(7, 4, "x", Checksum::None).unwrap();
        assert_eq!(plain.len(), 19 + 8 + 1);
        assert!(Event::parse(&plain, Checksum::None).is_ok());
    }

    #[test]
    fn format_description_matches_mariadb() {
        let real = EventReader::binlog_file(FILE1)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let real_fde = real.format_description().unwrap();
        let ev = format_description(&FormatDescriptionSpec {
            server_version: real_fde.server_version,
            timestamp: real.timestamp(),
            create_timestamp: real_fde.create_timestamp,
            server_id: real.server_id(),
            log_pos: real.log_pos(),
            flags: real.flags(),
            checksum: Checksum::Crc32,
        })
        .unwrap();
        // Byte for byte the event mariadbd wrote.
        assert_eq!(ev, real.raw());

        let ours = format_description(&FormatDescriptionSpec {
            server_version: "10.11.19-MariaDB-phx",
            timestamp: 0,
            create_timestamp: 0,
            server_id: 9,
            log_pos: 0,
            flags: 0,
            checksum: Checksum::None,
        })
        .unwrap();
        assert_eq!(ours.len(), 252);
        let e = Event::parse(&ours, Checksum::Crc32).unwrap();
        assert_eq!(e.checksum(), Checksum::None);
        let f = e.format_description().unwrap();
        assert_eq!(f.server_version, "10.11.19-MariaDB-phx");
        assert_eq!(f.post_header_lengths, real_fde.post_header_lengths);
        f.check_supported().unwrap();
        assert_eq!(crc32(&ours[..248]).to_le_bytes(), ours[248..]);

        let too_long = "1".repeat(50);
        assert!(
            format_description(&FormatDescriptionSpec {
                server_version: &too_long,
                ..FormatDescriptionSpec {
                    server_version: "",
                    timestamp: 0,
                    create_timestamp: 0,
                    server_id: 0,
                    log_pos: 0,
                    flags: 0,
                    checksum: Checksum::Crc32,
                }
            })
            .is_err()
        );
    }

    #[test]
    fn heartbeat_events() {
        let hb = heartbeat(5, 1234, "phx-bin.000003", Checksum::Crc32).unwrap();
        let e = Event::parse(&hb, Checksum::Crc32).unwrap();
        assert_eq!(e.event_type(), EventType::HEARTBEAT);
        assert_eq!((e.timestamp(), e.server_id(), e.log_pos()), (0, 5, 1234));
        assert_eq!(e.body(), b"phx-bin.000003");
        let h = e.heartbeat().unwrap();
        assert_eq!((h.log_pos, h.file_name), (1234, "phx-bin.000003"));

        let far = heartbeat(5, 1 << 33, "f", Checksum::Crc32).unwrap();
        let e = Event::parse(&far, Checksum::Crc32).unwrap();
        assert_eq!(e.log_pos(), 0);
        assert_eq!(e.heartbeat().unwrap().log_pos, 1 << 33);
        assert_eq!(e.heartbeat().unwrap().file_name, "f");
    }

    #[test]
    fn gtid_list_query_xid_builders() {
        let spec = EventSpec {
            timestamp: 1,
            event_type: EventType::UNKNOWN,
            server_id: 1,
            log_pos: 0,
            flags: 0,
        };
        let gl = gtid_list(
            &spec,
            &[Gtid::new(0, 1, 15), Gtid::new(2, 1, 1)],
            0,
            Checksum::Crc32,
        )
        .unwrap();
        let e = Event::parse(&gl, Checksum::Crc32).unwrap();
        assert_eq!(e.gtid_list().unwrap().gtids.len(), 2);

        let g = gtid_event(
            &spec,
            &GtidEvent::new(Gtid::new(0, 7, 3), GtidEvent::FL_STANDALONE),
            Checksum::Crc32,
        )
        .unwrap();
        let e = Event::parse(&g, Checksum::Crc32).unwrap();
        assert_eq!(e.server_id(), 7);
        assert_eq!(e.gtid().unwrap().gtid(), Gtid::new(0, 7, 3));
        assert_eq!(e.len(), 19 + 19 + 4);

        let q = query_event(
            &spec,
            &QueryEvent {
                thread_id: 1,
                exec_time: 0,
                error_code: 0,
                status_vars: &[],
                db: b"d",
                query: b"COMMIT",
            },
            Checksum::None,
        )
        .unwrap();
        assert!(
            Event::parse(&q, Checksum::None)
                .unwrap()
                .query()
                .unwrap()
                .is_commit()
        );
        let x = xid_event(&spec, 9, Checksum::Crc32).unwrap();
        assert_eq!(
            Event::parse(&x, Checksum::Crc32)
                .unwrap()
                .xid()
                .unwrap()
                .xid,
            9
        );
    }
}
