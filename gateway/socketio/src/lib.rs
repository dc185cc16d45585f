//! Socket.IO v5 (and v4 for v2 clients: `v2.rs`) on top of Engine.IO:
//! namespaces, sockets, rooms, events, acks and binary attachments. The
//! application plugs in through [`Application`].

pub mod app;
pub mod client;
pub mod fabric;
pub mod log;
pub mod memory_store;
pub mod metrics;
pub mod msgpack;
pub mod namespace;
pub mod packet;
pub mod parser;
pub mod recovery;
pub mod server;
pub mod snapshot;
pub mod socket;
pub mod store;
pub mod target;
pub mod v2;

pub use app::{Application, ConnectFuture, ConnectRequest, Event, Grant, Refusal};
pub use client::ClientState;
pub use fabric::{Evict, Fabric, LocalFabric, MovedAckAnswer, RoomReceipt};
pub use log::{Control, LogEntry, RecordCodec, RecoveryState, RoomSince};
pub use namespace::{Namespace, SocketLimits};
pub use packet::Payload;
pub use parser::Parser;
pub use recovery::{NamespaceSource, Recovery, RecoveryConfig};
pub use server::{SocketIo, SocketIoConfig};
pub use snapshot::{ClientSnapshot, MovedAckSnapshot, PartialSnapshot, SocketSnapshot};
pub use socket::{
    is_hidden_room, user_of_room, user_room, AckError, AckSender, DisconnectReason, JoinError,
    RecoverySink, Socket, SocketRecovery, SocketRef,
};
pub use target::Target;
