//! Unit tests of the recovery's parts.

use bytes::Bytes;
use ringway_engineio::Sid;

use super::replay::replay;
use super::*;
use crate::log::{Control, RecoveryState};
use crate::packet::Payload;
use crate::socket::{new_pid, SocketRecovery};
use crate::store::Record;
use crate::target::Target;

/// The tests' record encoding: the entry's fields as JSON (the
/// gateway's store encodes with protobuf; the recovery does not care).
struct JsonCodec;

impl RecordCodec for JsonCodec {
    fn encode_entry(&self, e: &LogEntry) -> Bytes {
        let control = match e.control {
            Control::None => 0,
            Control::Disconnect => 1,
            Control::CloseSession => 2,
        };
        let attachments: Vec<Vec<u8>> = e.attachments.iter().map(|b| b.to_vec()).collect();
        let v = serde_json::json!([
            e.namespace,
            e.rooms,
            e.except_rooms,
            e.except_socket,
            e.event,
            e.args_json,
            attachments,
            control
        ]);
        Bytes::from(v.to_string())
    }

    fn decode_entry(&self, data: &Bytes) -> Option<LogEntry> {
        #[allow(clippy::type_complexity)]
        let (namespace, rooms, except_rooms, except_socket, event, args_json, attachments, c): (
            String,
            Vec<String>,
            Vec<String>,
            String,
            String,
            String,
            Vec<Vec<u8>>,
            u8,
        ) = serde_json::from_slice(data).ok()?;
        Some(LogEntry {
            namespace,
            rooms,
            except_rooms,
            except_socket,
            event,
            args_json,
            attachments: attachments.into_iter().map(Bytes::from).collect(),
            control: match c {
                1 => Control::Disconnect,
                2 => Control::CloseSession,
                _ => Control::None,
            },
        })
    }

    fn encode_state(&self, _state: &RecoveryState) -> Bytes {
        Bytes::new()
    }

    fn decode_state(&self, _data: &Bytes) -> Option<RecoveryState> {
        None
    }
}

#[test]
fn auth_loses_pid_and_offset_and_keeps_the_rest() {
    let (auth, ask) = split_auth(r#"{"token":"t","pid":"p","offset":"1-2"}"#);
    assert_eq!(auth, r#"{"token":"t"}"#);
    assert_eq!(
        ask,
        Some(RecoveryAsk {
            pid: "p".into(),
            offset: Some("1-2".into())
        })
    );
    let (auth, ask) = split_auth(r#"{"pid":"p"}"#);
    assert_eq!(auth, "{}");
    assert_eq!(ask.unwrap().offset, None);
    // Untouched without the fields, or when they are not strings.
    assert_eq!(split_auth(r#"{"a":1}"#), (r#"{"a":1}"#.into(), None));
    assert_eq!(split_auth(r#"{"pid":7}"#).1, None);
    assert_eq!(
        split_auth(r#"{"pid":"p","offset":7}"#).1.unwrap().offset,
        Some(String::new())
    );
    // Not an object: left as it is.
    assert_eq!(split_auth(r#"["pid"]"#).1, None);
}

fn recoverable_socket(ns: &Arc<Namespace>) -> SocketRef {
    let session = super::super::namespace::tests::test_session();
    let recovery = SocketRecovery::restored(&new_pid(), 1, Offset::ZERO);
    crate::Socket::restored(
        ns.clone(),
        session,
        Sid::random(),
        "{}".into(),
        None,
        None,
        0,
        Some(recovery),
    )
}

fn record(offset: &str, entry: &LogEntry) -> Record {
    Record {
        offset: Offset::parse(offset).expect("an offset"),
        data: JsonCodec.encode_entry(entry),
    }
}

#[test]
fn a_replay_stops_at_the_disconnect_of_its_socket() {
    let ns = Namespace::new(
        "/",
        Arc::new(crate::LocalFabric),
        None,
        Default::default(),
        crate::Parser::Default,
    );
    let socket = recoverable_socket(&ns);
    let other = recoverable_socket(&ns);
    let to_it = Target::room(socket.id().to_string());
    let args = Payload::from_json_array("[1]".into());
    let records = [
        record("1-0", &LogEntry::emit("/", &to_it, "before", &args)),
        record("2-0", &LogEntry::end("/", other.id(), None, false)),
        record(
            "3-0",
            &LogEntry::emit("/", &Target::all(), "also before", &args),
        ),
        record(
            "4-0",
            &LogEntry::end("/", socket.id(), Some(("bye", &args)), true),
        ),
        record("5-0", &LogEntry::emit("/", &to_it, "after", &args)),
    ];
    let (missed, ended) = replay(&JsonCodec, &socket, Offset::ZERO, &records);
    assert_eq!(missed.len(), 2, "the entries before the disconnect");
    let ended = ended.expect("the socket's own disconnect");
    assert_eq!(ended.event, "bye");
    assert_eq!(ended.control, Control::CloseSession);
    // From past it: nothing ends the socket.
    let from = Offset::parse("4-0").expect("an offset");
    let (missed, ended) = replay(&JsonCodec, &socket, from, &records);
    assert_eq!((missed.len(), ended.is_none()), (1, true));
}

#[test]
fn pids_are_long_random_and_checked() {
    let a = new_pid();
    let b = new_pid();
    assert_ne!(a, b);
    assert!(is_pid(&a) && is_pid(&b));
    assert!(!is_pid("short"));
    assert!(!is_pid("aaaaaaaaaaaaaaaaaaaaa*"));
    assert!(!is_pid(&format!("{a}x")));
}
