//! Socket.IO on top of Engine.IO: decodes packets, reassembles binary
//! ones, runs namespace CONNECTs through the application, and routes
//! events and acks to sockets.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tracing::debug;

use ringway_proto::cluster::v1::SocketIoState;

use crate::engineio::{CloseReason, EngineHandler, Message, NotMovable, SessionRef, Sid};

use super::app::{Application, ConnectRequest, Event, Grant, Refusal};
use super::client::{ClientState, Partial};
use super::fabric::Fabric;
use super::namespace::Namespace;
use super::packet::{decode, encode_connect, encode_connect_error, Packet, PacketError, Payload};
use super::socket::{AckSender, DisconnectReason, Socket};

#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// A session that joins no namespace within this time is closed (the
    /// reference's connectTimeout).
    pub connect_timeout: Duration,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            connect_timeout: Duration::from_millis(45_000),
        }
    }
}

pub struct SocketIo<A: Application> {
    app: Arc<A>,
    config: SocketIoConfig,
    fabric: Arc<dyn Fabric>,
    namespaces: RwLock<HashMap<Box<str>, Arc<Namespace>>>,
}

impl<A: Application> SocketIo<A> {
    pub fn new(app: Arc<A>, config: SocketIoConfig, fabric: Arc<dyn Fabric>) -> SocketIo<A> {
        SocketIo {
            app,
            config,
            fabric,
            namespaces: RwLock::new(HashMap::new()),
        }
    }

    pub fn app(&self) -> &Arc<A> {
        &self.app
    }

    /// The namespace, if any client ever joined it.
    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn namespace_or_create(&self, name: &str) -> Arc<Namespace> {
        if let Some(ns) = self.namespace(name) {
            return ns;
        }
        self.namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.into())
            .or_insert_with(|| Namespace::new(name, self.fabric.clone()))
            .clone()
    }

    fn dispatch(
        &self,
        session: &SessionRef<ClientState>,
        packet: Packet<'_>,
        attachments: Vec<Bytes>,
        binary: bool,
    ) {
        let state = session.data();
        let nsp = match &packet {
            Packet::Connect { nsp, auth } => {
                return self.connect(session, nsp, auth.unwrap_or("{}"));
            }
            Packet::Disconnect { nsp }
            | Packet::Event { nsp, .. }
            | Packet::Ack { nsp, .. }
            | Packet::ConnectError { nsp } => *nsp,
        };
        let Some(socket) = state.socket(nsp) else {
            // The reference closes a client that talks to a namespace it
            // has not joined; while a CONNECT is being decided, the packet
            // is only dropped.
            if !state.is_connecting(nsp) {
                self.parse_error(session, "packet for a namespace not joined");
            }
            return;
        };
        let args = |args: String| {
            if binary {
                Payload::checked(args, attachments)
            } else {
                Ok(Payload::from_json_array(args))
            }
        };
        match packet {
            Packet::Connect { .. } => {}
            Packet::Disconnect { .. } => {
                state.remove_socket(&socket);
                if socket.detach() {
                    self.app
                        .on_disconnect(&socket, DisconnectReason::ClientNamespaceDisconnect);
                }
            }
            Packet::Event {
                id,
                name,
                args: raw,
                ..
            } => match args(raw) {
                Ok(args) => {
                    let ack = id.map(|id| AckSender::new(socket.clone(), id));
                    self.app.on_event(&socket, Event { name, args }, ack);
                }
                Err(err) => self.parse_error(session, err),
            },
            Packet::Ack { id, args: raw, .. } => match (args(raw), id) {
                (Ok(args), Some(id)) => socket.on_ack(id, args),
                (Ok(_), None) => {}
                (Err(err), _) => self.parse_error(session, err),
            },
            // Only servers send CONNECT_ERROR.
            Packet::ConnectError { .. } => self.parse_error(session, "CONNECT_ERROR from a client"),
        }
    }

    fn parse_error(&self, session: &SessionRef<ClientState>, err: impl std::fmt::Display) {
        debug!(sid = %session.sid(), %err, "bad socket.io packet");
        session.close(CloseReason::ParseError);
    }

    fn connect(&self, session: &SessionRef<ClientState>, nsp: &str, auth: &str) {
        if !self.app.has_namespace(nsp) {
            let _ = session.send(encode_connect_error(nsp, "Invalid namespace", None));
            return;
        }
        match session.data().begin_connect(nsp) {
            Ok(()) => {}
            // A second CONNECT to a joined namespace breaks the protocol.
            Err(true) => return self.parse_error(session, "namespace joined twice"),
            Err(false) => return,
        }
        let request = ConnectRequest {
            namespace: nsp.to_owned(),
            auth: auth.to_owned(),
            session: session.clone(),
        };
        let mut decision = self.app.authorize(request);
        // Most decisions are immediate (the echo application, JWT): no task.
        match (&mut decision).now_or_never() {
            Some(result) => self.finish_connect(session, nsp, auth, result),
            None => {
                // An asynchronous decision (an upstream hook) finishes in
                // its own task.
                let app = self.app.clone();
                let ns = self.namespace_or_create(nsp);
                let session = session.clone();
                let auth = auth.to_owned();
                tokio::spawn(async move {
                    let result = decision.await;
                    finish_connect(&app, &ns, &session, &auth, result);
                });
            }
        }
    }

    fn finish_connect(
        &self,
        session: &SessionRef<ClientState>,
        nsp: &str,
        auth: &str,
        result: Result<Grant, Refusal>,
    ) {
        let ns = self.namespace_or_create(nsp);
        finish_connect(&self.app, &ns, session, auth, result);
    }
}

fn finish_connect<A: Application>(
    app: &Arc<A>,
    ns: &Arc<Namespace>,
    session: &SessionRef<ClientState>,
    auth: &str,
    result: Result<Grant, Refusal>,
) {
    let state = session.data();
    let grant = match result {
        Ok(grant) => grant,
        Err(refusal) => {
            state.end_connect(ns.name(), None);
            let _ = session.send(encode_connect_error(
                ns.name(),
                &refusal.message,
                refusal.data.as_ref(),
            ));
            return;
        }
    };
    let socket = Socket::new(
        ns.clone(),
        session.clone(),
        auth.into(),
        grant.user.map(String::into_boxed_str),
        grant.data,
    );
    ns.insert(socket.clone());
    if !state.end_connect(ns.name(), Some(socket.clone())) {
        // The session closed while the CONNECT was being decided.
        socket.detach();
        return;
    }
    let user_room = socket.user().map(super::socket::user_room);
    let receipts: Vec<_> = grant
        .rooms
        .iter()
        .filter_map(|room| socket.join(room))
        .chain(user_room.and_then(|room| socket.join_any(&room)))
        .collect();
    let answer = format!("{{\"sid\":\"{}\"}}", socket.id());
    let (ns, session) = (ns.clone(), session.clone());
    let connected = move |app: &A| {
        if socket.connected() && session.send(encode_connect(ns.name(), &answer)).is_ok() {
            app.on_connect(&socket);
        }
    };
    if receipts.is_empty() {
        return connected(app);
    }
    // Rooms new on this node: answer the CONNECT once every node knows of
    // them, so emits into them from anywhere reach the new socket.
    let app = app.clone();
    tokio::spawn(async move {
        for receipt in receipts {
            receipt.await;
        }
        connected(&app);
    });
}

impl<A: Application> EngineHandler for SocketIo<A> {
    type Data = ClientState;

    fn on_open(&self, _session: &SessionRef<ClientState>) {}

    fn open_timeout(&self) -> Option<Duration> {
        Some(self.config.connect_timeout)
    }

    /// A session that joined no namespace in time is closed (the
    /// reference's connectTimeout), so bare handshakes hold nothing.
    fn on_open_timeout(&self, session: &SessionRef<ClientState>) {
        if !session.data().ever_joined() {
            debug!(sid = %session.sid(), "no namespace joined in time");
            session.close(CloseReason::ForcedClose);
        }
    }

    fn on_message(&self, session: &SessionRef<ClientState>, message: Message<'_>) {
        let state = session.data();
        match message {
            Message::Text(text) => {
                if state.has_partial() {
                    return self.parse_error(session, PacketError::UnexpectedText);
                }
                let packet = match decode(text) {
                    Ok(packet) => packet,
                    Err(err) => return self.parse_error(session, err),
                };
                let expected = packet.attachments();
                if expected == 0 {
                    return self.dispatch(session, packet, Vec::new(), false);
                }
                let partial = match packet {
                    Packet::Event {
                        nsp,
                        id,
                        name,
                        args,
                        ..
                    } => Partial {
                        nsp: nsp.to_owned(),
                        id,
                        name: Some(name),
                        args,
                        expected,
                        received: Vec::with_capacity(expected),
                    },
                    Packet::Ack { nsp, id, args, .. } => Partial {
                        nsp: nsp.to_owned(),
                        id,
                        name: None,
                        args,
                        expected,
                        received: Vec::with_capacity(expected),
                    },
                    _ => return,
                };
                state.start_partial(partial);
            }
            Message::Binary(data) => match state.push_attachment(data) {
                Err(()) => self.parse_error(session, PacketError::UnexpectedBinary),
                Ok(None) => {}
                Ok(Some(partial)) => {
                    let Partial {
                        nsp,
                        id,
                        name,
                        args,
                        expected,
                        received,
                    } = *partial;
                    let packet = match name {
                        Some(name) => Packet::Event {
                            nsp: &nsp,
                            id,
                            name,
                            args,
                            attachments: expected,
                        },
                        None => Packet::Ack {
                            nsp: &nsp,
                            id,
                            args,
                            attachments: expected,
                        },
                    };
                    self.dispatch(session, packet, received, true);
                }
            },
        }
    }

    fn on_close(&self, session: &SessionRef<ClientState>, reason: CloseReason) {
        for socket in session.data().close() {
            // A session handed off lives on elsewhere: its sockets leave
            // this node without the application seeing a disconnect.
            if socket.detach() && reason != CloseReason::HandedOff {
                self.app
                    .on_disconnect(&socket, DisconnectReason::Session(reason));
            }
        }
    }

    fn export(
        &self,
        session: &SessionRef<ClientState>,
    ) -> Result<Option<SocketIoState>, NotMovable> {
        session.data().export().map(Some).ok_or(NotMovable)
    }

    fn restore(&self, session: &SessionRef<ClientState>, state: Option<SocketIoState>) {
        let Some(state) = state else {
            return;
        };
        let client = session.data();
        client.restore_flags(state.ever_joined, state.partial);
        for s in state.sockets {
            let Some(id) = Sid::parse(&s.id) else {
                debug!(sid = %session.sid(), "handed-off socket with a bad id dropped");
                continue;
            };
            let ns = self.namespace_or_create(&s.namespace);
            let socket = Socket::restored(
                ns.clone(),
                session.clone(),
                id,
                s.auth.into_boxed_str(),
                s.user.map(String::into_boxed_str),
                (!s.data.is_empty()).then_some(s.data),
                s.next_ack_id,
            );
            ns.insert(socket.clone());
            client.add_restored(socket.clone());
            for room in &s.rooms {
                socket.join_any(room);
            }
        }
    }
}
