//! WebSocket frames: `{"type": "<event>", "id"?: "<request id>", "payload": {...}}`.
//!
//! [`ClientRequest`] is what clients send, [`ServerEvent`] what servers send.
//! Both derive `Serialize` and `Deserialize`, so the server and the client SDK
//! share one definition of every event.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ErrorCode;
use super::{
    Member, Message, P2pInfo, P2pServerInfo, P2pSession, PeerId, Presence, RelayGrant, Role, Room,
    RoomId, SessionId, SessionKind, Timestamp, User, UserId,
};

/// Request ids are echoed back verbatim; longer ones are refused.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The payload of `system.hello`, the first frame a client sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// For each room, the last `seq` the client has; newer messages are
    /// delivered right after `system.welcome`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<HashMap<RoomId, u64>>,
    /// The agent's direct-connection details, for P2P sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p: Option<P2pInfo>,
}

/// The kinds of WebRTC signal (`rtc.offer`, `rtc.answer`, `rtc.ice`,
/// `rtc.hangup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtcKind {
    Offer,
    Answer,
    Ice,
    Hangup,
}

impl RtcKind {
    /// The event that carries `signal` to its target.
    pub fn event(self, signal: RtcSignal) -> ServerEvent {
        match self {
            RtcKind::Offer => ServerEvent::RtcOffer(signal),
            RtcKind::Answer => ServerEvent::RtcAnswer(signal),
            RtcKind::Ice => ServerEvent::RtcIce(signal),
            RtcKind::Hangup => ServerEvent::RtcHangup(signal),
        }
    }

    /// The kind as the event types name it: `offer` for `rtc.offer`, …
    pub fn as_str(self) -> &'static str {
        match self {
            RtcKind::Offer => "offer",
            RtcKind::Answer => "answer",
            RtcKind::Ice => "ice",
            RtcKind::Hangup => "hangup",
        }
    }
}

/// A name that is none of the [`RtcKind`]s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an rtc kind (offer, answer, ice, hangup): {0:?}")]
pub struct UnknownRtcKind(pub String);

impl std::str::FromStr for RtcKind {
    type Err = UnknownRtcKind;

    /// `offer`, `answer`, `ice` or `hangup`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RtcKind::Offer,
            RtcKind::Answer,
            RtcKind::Ice,
            RtcKind::Hangup,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| UnknownRtcKind(s.to_owned()))
    }
}

/// A WebRTC signaling payload: routed to `target_peer_id`, everything else
/// (`sdp`, `candidate`, ...) passed through untouched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RtcSignal {
    pub target_peer_id: PeerId,
    pub room_id: RoomId,
    /// Filled in by the server on delivery; ignored when a client sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_peer_id: Option<PeerId>,
    /// Filled in by the server on delivery; ignored when a client sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_user_id: Option<UserId>,
    #[serde(flatten)]
    pub body: Map<String, Value>,
}

/// Everything a client may send over the WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
#[non_exhaustive]
pub enum ClientRequest {
    #[serde(rename = "system.hello")]
    Hello(Hello),
    #[serde(rename = "system.ping")]
    Ping(#[serde(default)] Map<String, Value>),
    #[serde(rename = "room.join")]
    RoomJoin { room_id: RoomId },
    #[serde(rename = "room.leave")]
    RoomLeave { room_id: RoomId },
    #[serde(rename = "chat.message.send")]
    MessageSend {
        room_id: RoomId,
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    #[serde(rename = "chat.typing")]
    Typing { room_id: RoomId, typing: bool },
    #[serde(rename = "presence.update")]
    PresenceUpdate {
        status: Presence,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    #[serde(rename = "rtc.offer")]
    RtcOffer(RtcSignal),
    #[serde(rename = "rtc.answer")]
    RtcAnswer(RtcSignal),
    #[serde(rename = "rtc.ice")]
    RtcIce(RtcSignal),
    #[serde(rename = "rtc.hangup")]
    RtcHangup(RtcSignal),
    #[serde(rename = "p2p.session.request")]
    P2pRequest {
        room_id: RoomId,
        target_peer_id: PeerId,
        kind: SessionKind,
    },
    /// Extension: closes a P2P session the sender is a party to.
    #[serde(rename = "p2p.session.close")]
    P2pClose { session_id: SessionId },
    /// Extension: replaces this connection's announced [`P2pInfo`] (an
    /// agent that learned or lost an address, e.g. its server-reflexive
    /// one after a NAT mapping changed). Later sessions carry the new one.
    #[serde(rename = "p2p.announce")]
    P2pAnnounce { p2p: P2pInfo },
}

impl ClientRequest {
    /// The `type` this event travels under.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientRequest::Hello(_) => "system.hello",
            ClientRequest::Ping(_) => "system.ping",
            ClientRequest::RoomJoin { .. } => "room.join",
            ClientRequest::RoomLeave { .. } => "room.leave",
            ClientRequest::MessageSend { .. } => "chat.message.send",
            ClientRequest::Typing { .. } => "chat.typing",
            ClientRequest::PresenceUpdate { .. } => "presence.update",
            ClientRequest::RtcOffer(_) => "rtc.offer",
            ClientRequest::RtcAnswer(_) => "rtc.answer",
            ClientRequest::RtcIce(_) => "rtc.ice",
            ClientRequest::RtcHangup(_) => "rtc.hangup",
            ClientRequest::P2pRequest { .. } => "p2p.session.request",
            ClientRequest::P2pClose { .. } => "p2p.session.close",
            ClientRequest::P2pAnnounce { .. } => "p2p.announce",
        }
    }
}

/// The payload of an `error` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: how long to wait before sending again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorPayload {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// Everything a server sends over the WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
#[non_exhaustive]
pub enum ServerEvent {
    #[serde(rename = "system.welcome")]
    Welcome {
        peer_id: PeerId,
        user: User,
        server_time: Timestamp,
        heartbeat_ms: u64,
        /// Extension: address discovery and relay offered to agents.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p2p: Option<P2pServerInfo>,
    },
    #[serde(rename = "system.pong")]
    Pong { server_time: Timestamp },
    #[serde(rename = "room.joined")]
    RoomJoined {
        room_id: RoomId,
        user: User,
        peer_id: PeerId,
        /// Only in the answer to the joining connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<Member>>,
    },
    #[serde(rename = "room.left")]
    RoomLeft { room_id: RoomId, user_id: UserId },
    /// Extension: a room's name, topic or visibility changed.
    #[serde(rename = "room.updated")]
    RoomUpdated { room: Room },
    /// Extension: a room was deleted by its owner.
    #[serde(rename = "room.deleted")]
    RoomDeleted { room_id: RoomId },
    /// Extension: a member's role changed.
    #[serde(rename = "room.member.updated")]
    MemberUpdated {
        room_id: RoomId,
        user_id: UserId,
        role: Role,
    },
    #[serde(rename = "chat.message.created")]
    MessageCreated { message: Message },
    #[serde(rename = "chat.typing")]
    Typing {
        room_id: RoomId,
        user_id: UserId,
        typing: bool,
    },
    #[serde(rename = "presence.update")]
    PresenceUpdate {
        user_id: UserId,
        status: Presence,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    #[serde(rename = "rtc.offer")]
    RtcOffer(RtcSignal),
    #[serde(rename = "rtc.answer")]
    RtcAnswer(RtcSignal),
    #[serde(rename = "rtc.ice")]
    RtcIce(RtcSignal),
    #[serde(rename = "rtc.hangup")]
    RtcHangup(RtcSignal),
    #[serde(rename = "p2p.session.created")]
    P2pSessionCreated {
        session: P2pSession,
        session_token: String,
        /// The initiator's direct-connection details.
        initiator: P2pInfo,
        /// The target's direct-connection details.
        target: P2pInfo,
        /// Extension: this recipient's relay binding right (absent when the
        /// server does not relay).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<RelayGrant>,
    },
    #[serde(rename = "p2p.session.closed")]
    P2pSessionClosed {
        session_id: SessionId,
        reason: String,
    },
    /// Extension: the answer to a request that carried an `id` and has no
    /// result event of its own (`chat.typing`, `rtc.*`, `p2p.session.close`).
    #[serde(rename = "system.ack")]
    Ack {
        /// The `type` of the request this answers.
        request: String,
    },
    #[serde(rename = "error")]
    Error(ErrorPayload),
}

impl ServerEvent {
    /// The `type` this event travels under. An exhaustive match: a new
    /// variant does not compile until it is named here.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerEvent::Welcome { .. } => "system.welcome",
            ServerEvent::Pong { .. } => "system.pong",
            ServerEvent::RoomJoined { .. } => "room.joined",
            ServerEvent::RoomLeft { .. } => "room.left",
            ServerEvent::RoomUpdated { .. } => "room.updated",
            ServerEvent::RoomDeleted { .. } => "room.deleted",
            ServerEvent::MemberUpdated { .. } => "room.member.updated",
            ServerEvent::MessageCreated { .. } => "chat.message.created",
            ServerEvent::Typing { .. } => "chat.typing",
            ServerEvent::PresenceUpdate { .. } => "presence.update",
            ServerEvent::RtcOffer(_) => "rtc.offer",
            ServerEvent::RtcAnswer(_) => "rtc.answer",
            ServerEvent::RtcIce(_) => "rtc.ice",
            ServerEvent::RtcHangup(_) => "rtc.hangup",
            ServerEvent::P2pSessionCreated { .. } => "p2p.session.created",
            ServerEvent::P2pSessionClosed { .. } => "p2p.session.closed",
            ServerEvent::Ack { .. } => "system.ack",
            ServerEvent::Error(_) => "error",
        }
    }

    /// Shorthand for an `error` event.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerEvent::Error(ErrorPayload::new(code, message))
    }
}

/// A parsed client frame: the event and the request id to answer with.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingFrame {
    pub id: Option<String>,
    pub event: ClientRequest,
}

impl IncomingFrame {
    /// A frame without a request id: nothing answers it but errors and the
    /// events it causes.
    pub fn new(event: ClientRequest) -> Self {
        IncomingFrame { id: None, event }
    }

    /// A request: its answer (`ack`, or the reply event) carries `id`.
    pub fn request(id: impl Into<String>, event: ClientRequest) -> Self {
        IncomingFrame {
            id: Some(id.into()),
            event,
        }
    }
}

/// A frame on its way to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutgoingFrame {
    #[serde(flatten)]
    pub event: ServerEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl OutgoingFrame {
    /// A frame with no request id (a broadcast).
    pub fn event(event: ServerEvent) -> Self {
        Self { event, id: None }
    }

    /// A frame answering request `id`.
    pub fn reply(id: Option<String>, event: ServerEvent) -> Self {
        Self { event, id }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","payload":{"code":"internal","message":"encoding failed"}}"#
                .to_owned()
        })
    }
}

#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    payload: Option<Value>,
}

/// Parses one text frame from a client.
///
/// On failure the error carries the request id when one could be read, so
/// the `error` answer can name it.
pub fn parse_client_frame(text: &str) -> Result<IncomingFrame, (Option<String>, ErrorPayload)> {
    let invalid = |id: Option<String>, msg: String| {
        Err((id, ErrorPayload::new(ErrorCode::InvalidRequest, msg)))
    };
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            return invalid(
                None,
                format!("frame is not a JSON object with a \"type\": {e}"),
            );
        }
    };
    let id = match raw.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_REQUEST_ID_LEN => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return invalid(
                None,
                format!("\"id\" must be a string of at most {MAX_REQUEST_ID_LEN} bytes"),
            );
        }
    };
    let payload = match raw.payload {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => return invalid(id, "\"payload\" must be an object".to_owned()),
    };
    let mut envelope = Map::with_capacity(2);
    envelope.insert("type".to_owned(), Value::String(raw.kind.clone()));
    envelope.insert("payload".to_owned(), payload);
    match serde_json::from_value::<ClientRequest>(Value::Object(envelope)) {
        Ok(event) => Ok(IncomingFrame { id, event }),
        Err(e) if e.to_string().starts_with("unknown variant") => {
            invalid(id, format!("unknown event type {:?}", raw.kind))
        }
        Err(e) => invalid(id, format!("bad {} payload: {e}", raw.kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// JSON-shaped strings built from the protocol's own words, so the
    /// decoder is driven deep into every event type, not only its first check.
    fn frame_like() -> impl Strategy<Value = String> {
        let types = prop::sample::select(vec![
            "system.hello",
            "system.ping",
            "room.join",
            "room.leave",
            "chat.message.send",
            "chat.typing",
            "presence.update",
            "rtc.offer",
            "rtc.ice",
            "p2p.session.request",
            "p2p.session.close",
            "p2p.announce",
            "nope",
            "",
        ]);
        let value = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(|s| json!(s)),
            Just(json!(RoomId::new())),
            Just(json!({"since": {"x": -1}})),
            Just(json!([1, 2])),
        ];
        let keys = prop::sample::select(vec![
            "room_id",
            "content",
            "client_id",
            "typing",
            "status",
            "target_peer_id",
            "kind",
            "session_id",
            "since",
            "p2p",
            "sdp",
        ]);
        (
            types,
            prop::collection::vec((keys, value.clone()), 0..5),
            value,
        )
            .prop_map(|(kind, fields, id)| {
                let payload: Map<String, Value> =
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                json!({"type": kind, "id": id, "payload": payload}).to_string()
            })
    }

    proptest! {
        #[test]
        fn the_decoder_never_panics_on_arbitrary_text(text in ".{0,200}") {
            let _ = parse_client_frame(&text);
        }

        #[test]
        fn the_decoder_never_panics_on_frame_like_json(text in frame_like()) {
            match parse_client_frame(&text) {
                Ok(frame) => prop_assert!(frame.id.as_ref().is_none_or(|id| id.len() <= MAX_REQUEST_ID_LEN)),
                Err((_, err)) => prop_assert_eq!(err.code, ErrorCode::InvalidRequest),
            }
        }
    }

    /// Found by the `ws_client_frame` fuzz target: without serde_json's
    /// `float_roundtrip` a number could parse one unit in the last place
    /// off, so a relayed RTC signal carried another number than the one
    /// sent, and a frame did not decode to itself after one encode.
    #[test]
    fn relayed_numbers_survive_decode_and_encode_exactly() {
        let (target, room) = (PeerId::new(), RoomId::new());
        for n in [
            "-266666666666666666666666666666666666666666666",
            "-2.6666666666666665e+44",
            "0.1",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "5e-324",
            "123456789012345678901234567890",
        ] {
            let text = format!(
                r#"{{"type":"rtc.offer","payload":{{"target_peer_id":"{target}","room_id":"{room}","x":{n}}}}}"#
            );
            let frame = parse_client_frame(&text).expect("offer");
            let ClientRequest::RtcOffer(signal) = &frame.event else {
                panic!("not an offer: {frame:?}");
            };
            // Rust's own parse is correctly rounded.
            let exact: f64 = n.parse().expect("a number");
            assert_eq!(signal.body["x"].as_f64(), Some(exact), "{n}");
            let encoded = serde_json::to_string(&frame.event).expect("encode");
            let again = parse_client_frame(&encoded).expect("again");
            assert_eq!(again.event, frame.event, "{n}");
        }
    }

    #[test]
    fn parses_a_send_with_id() {
        let room = RoomId::new();
        let text = json!({"type": "chat.message.send", "id": "r1",
            "payload": {"room_id": room, "content": "hi", "client_id": "c1"}})
        .to_string();
        let frame = parse_client_frame(&text).expect("parse");
        assert_eq!(frame.id.as_deref(), Some("r1"));
        assert_eq!(
            frame.event,
            ClientRequest::MessageSend {
                room_id: room,
                content: "hi".into(),
                client_id: Some("c1".into())
            }
        );
    }

    #[test]
    fn payload_may_be_omitted_where_nothing_is_required() {
        let frame = parse_client_frame(r#"{"type":"system.ping"}"#).expect("ping");
        assert!(matches!(frame.event, ClientRequest::Ping(_)));
        let frame = parse_client_frame(r#"{"type":"system.hello"}"#).expect("hello");
        assert_eq!(frame.event, ClientRequest::Hello(Hello::default()));
    }

    #[test]
    fn bad_frames_are_invalid_request_with_the_id_kept() {
        let (id, err) = parse_client_frame("not json").expect_err("not json");
        assert_eq!((id, err.code), (None, ErrorCode::InvalidRequest));
        let (id, err) =
            parse_client_frame(r#"{"type":"nope","id":"7","payload":{}}"#).expect_err("unknown");
        assert_eq!(id.as_deref(), Some("7"));
        assert!(
            err.message.contains("unknown event type"),
            "{}",
            err.message
        );
        let (id, err) = parse_client_frame(r#"{"type":"room.join","id":"8","payload":{}}"#)
            .expect_err("missing field");
        assert_eq!(id.as_deref(), Some("8"));
        assert!(err.message.contains("room_id"), "{}", err.message);
    }

    #[test]
    fn rtc_signals_keep_their_body() {
        let text = json!({"type": "rtc.offer", "payload": {
            "target_peer_id": PeerId::new(), "room_id": RoomId::new(), "sdp": "v=0"}})
        .to_string();
        let frame = parse_client_frame(&text).expect("parse");
        let ClientRequest::RtcOffer(signal) = frame.event else {
            panic!("not an offer")
        };
        assert_eq!(signal.body.get("sdp"), Some(&json!("v=0")));
    }

    #[test]
    fn outgoing_frames_have_type_id_and_payload() {
        let frame = OutgoingFrame::reply(
            Some("9".into()),
            ServerEvent::error(ErrorCode::Forbidden, "no"),
        );
        let v: Value = serde_json::from_str(&frame.to_json()).expect("json");
        assert_eq!(
            v,
            json!({"type": "error", "id": "9", "payload": {"code": "forbidden", "message": "no"}})
        );
        let back: OutgoingFrame = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, frame);
    }

    /// One of every server event, as the server fills them in.
    fn every_server_event() -> Vec<ServerEvent> {
        use crate::protocol::{MessageId, SessionState, Visibility};
        let t = Timestamp::from_unix_millis(1_790_000_000_123);
        let user = User {
            id: UserId::new(),
            username: "alice".into(),
            display_name: "Alice".into(),
            created_at: t,
        };
        let room_id = RoomId::new();
        let signal = RtcSignal {
            target_peer_id: PeerId::new(),
            room_id,
            from_peer_id: Some(PeerId::new()),
            from_user_id: Some(user.id),
            body: serde_json::from_value(serde_json::json!({"sdp": "v=0", "n": 1})).expect("map"),
        };
        let info = P2pInfo {
            cert_fingerprint: Some("ab".repeat(32)),
            addrs: vec!["127.0.0.1:4433".into()],
        };
        vec![
            ServerEvent::Welcome {
                peer_id: PeerId::new(),
                user: user.clone(),
                server_time: t,
                heartbeat_ms: 15_000,
                p2p: Some(P2pServerInfo {
                    udp_port: Some(3000),
                    relay: true,
                }),
            },
            ServerEvent::Pong { server_time: t },
            ServerEvent::RoomJoined {
                room_id,
                user: user.clone(),
                peer_id: PeerId::new(),
                members: Some(vec![Member {
                    user: user.clone(),
                    role: Role::Owner,
                    joined_at: t,
                    presence: Presence::Online,
                }]),
            },
            ServerEvent::RoomJoined {
                room_id,
                user: user.clone(),
                peer_id: PeerId::new(),
                members: None,
            },
            ServerEvent::RoomLeft {
                room_id,
                user_id: user.id,
            },
            ServerEvent::RoomUpdated {
                room: Room {
                    id: room_id,
                    name: "general".into(),
                    topic: Some("t".into()),
                    visibility: Visibility::Private,
                    created_by: user.id,
                    created_at: t,
                    member_count: 2,
                },
            },
            ServerEvent::RoomDeleted { room_id },
            ServerEvent::MemberUpdated {
                room_id,
                user_id: user.id,
                role: Role::Admin,
            },
            ServerEvent::MessageCreated {
                message: Message {
                    id: MessageId::new(),
                    room_id,
                    seq: 7,
                    sender: user.clone(),
                    content: "héllo".into(),
                    created_at: t,
                    client_id: Some("c1".into()),
                },
            },
            ServerEvent::Typing {
                room_id,
                user_id: user.id,
                typing: true,
            },
            ServerEvent::PresenceUpdate {
                user_id: user.id,
                status: Presence::Busy,
                message: Some("in a call".into()),
            },
            ServerEvent::RtcOffer(signal.clone()),
            ServerEvent::RtcAnswer(signal.clone()),
            ServerEvent::RtcIce(signal.clone()),
            ServerEvent::RtcHangup(signal),
            ServerEvent::P2pSessionCreated {
                session: P2pSession {
                    id: SessionId::new(),
                    room_id,
                    kind: SessionKind::Folder,
                    initiator_peer_id: PeerId::new(),
                    target_peer_id: PeerId::new(),
                    initiator_user_id: user.id,
                    target_user_id: UserId::new(),
                    state: SessionState::Pending,
                    created_at: t,
                    expires_at: t,
                },
                session_token: "a.b.c".into(),
                initiator: info.clone(),
                target: P2pInfo::default(),
                relay: Some(RelayGrant {
                    party: crate::protocol::RelayParty::Target,
                    key: "00".repeat(32),
                    addr: None,
                }),
            },
            ServerEvent::P2pSessionClosed {
                session_id: SessionId::new(),
                reason: "expired".into(),
            },
            ServerEvent::Ack {
                request: "rtc.offer".into(),
            },
            ServerEvent::Error(ErrorPayload {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                retry_after_ms: Some(40),
            }),
        ]
    }

    fn server_type_name(event: &ServerEvent) -> &'static str {
        event.type_name()
    }

    #[test]
    fn every_server_event_round_trips_as_a_client_reads_it() {
        let events = every_server_event();
        let names: std::collections::BTreeSet<_> = events.iter().map(server_type_name).collect();
        assert_eq!(names.len(), 18, "one sample of each variant: {names:?}");
        for event in events {
            for id in [None, Some("r42".to_owned())] {
                let frame = OutgoingFrame::reply(id.clone(), event.clone());
                let text = frame.to_json();
                let v: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(v["type"], server_type_name(&event), "{text}");
                assert!(v["payload"].is_object(), "{text}");
                assert_eq!(v.get("id").and_then(Value::as_str), id.as_deref(), "{text}");
                let back: OutgoingFrame = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
                assert_eq!(back, frame, "{text}");
            }
        }
    }
}
