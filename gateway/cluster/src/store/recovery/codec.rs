//! The recovery log's records as bytes: `ringway.cluster.v1` messages
//! (`LogEntry`, `RecoveryState`) encoded with prost, as every version of
//! Ringway has written them (a rolling upgrade reads the old log).

use bytes::Bytes;
use prost::Message as _;
use ringway_proto::cluster::v1 as pb;

use crate::convert::{log_entry, log_entry_from, recovery_state, recovery_state_from};
use ringway_socketio::{LogEntry, RecordCodec, RecoveryState};

/// The protobuf encoding of log records.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProstCodec;

impl RecordCodec for ProstCodec {
    fn encode_entry(&self, entry: &LogEntry) -> Bytes {
        Bytes::from(log_entry(entry).encode_to_vec())
    }

    fn decode_entry(&self, data: &Bytes) -> Option<LogEntry> {
        pb::LogEntry::decode(data.clone()).ok().map(log_entry_from)
    }

    fn encode_state(&self, state: &RecoveryState) -> Bytes {
        Bytes::from(recovery_state(state).encode_to_vec())
    }

    fn decode_state(&self, data: &Bytes) -> Option<RecoveryState> {
        pb::RecoveryState::decode(data.clone())
            .ok()
            .map(recovery_state_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringway_socketio::{Control, RoomSince};

    #[test]
    fn records_survive_the_round_trip() {
        let entry = LogEntry {
            namespace: "/chat".into(),
            rooms: vec!["r".into()],
            except_rooms: vec!["x".into()],
            except_socket: "AAAAAAAAAAAAAAAAAAAA".into(),
            event: "m".into(),
            args_json: "[1,{\"_placeholder\":true,\"num\":0}]".into(),
            attachments: vec![Bytes::from_static(b"\x00\x01")],
            control: Control::CloseSession,
        };
        assert_eq!(
            ProstCodec.decode_entry(&ProstCodec.encode_entry(&entry)),
            Some(entry)
        );
        let state = RecoveryState {
            namespace: "/".into(),
            socket_id: "s".into(),
            sid: "sid".into(),
            node: "n1".into(),
            user: Some("alice".into()),
            data: Bytes::from_static(b"{}"),
            rooms: vec![RoomSince {
                room: "r".into(),
                since: "1-2".into(),
            }],
            started_at: "0-0".into(),
            saved_at_ms: 1_700_000_000_000,
        };
        assert_eq!(
            ProstCodec.decode_state(&ProstCodec.encode_state(&state)),
            Some(state)
        );
        assert_eq!(
            ProstCodec.decode_entry(&Bytes::from_static(b"\xff\xff")),
            None
        );
    }

    /// The bytes of an entry as earlier versions wrote them (the prost
    /// encoding of the wire message): read the same.
    #[test]
    fn reads_what_earlier_versions_wrote() {
        let old = pb::LogEntry {
            namespace: "/".into(),
            rooms: vec!["r".into()],
            event: "e".into(),
            args_json: "[]".into(),
            control: pb::Control::Disconnect as i32,
            ..pb::LogEntry::default()
        };
        let entry = ProstCodec
            .decode_entry(&Bytes::from(old.encode_to_vec()))
            .expect("decodes");
        assert_eq!(entry.control, Control::Disconnect);
        assert_eq!(entry.rooms, ["r"]);
    }
}
