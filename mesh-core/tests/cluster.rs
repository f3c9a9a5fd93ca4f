//! The cluster layer in one process: two services (two nodes) on one store
//! and one bus. The bus suite runs against the in-process [`LocalBus`] and
//! against NATS (`MESH_TEST_NATS`, started by `scripts/services.sh`); the
//! fault tests make the in-process bus lose publications and check that
//! the store sweep delivers what it lost, once, in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh_core::cluster::nats::NatsBus;
use mesh_core::cluster::{Bus, ClusterConfig, LocalBus, NodeId};
use mesh_core::prelude::*;
use mesh_core::protocol::{Message, RoomId};
use mesh_core::service::PeerConnection;
use mesh_core::storage::{DynStore, IntoDynStore};

const WAIT: Duration = Duration::from_secs(10);

// ---- the bus suite ----

async fn bus_suite(bus: Arc<dyn Bus>, prefix: &str) {
    let mut all = bus
        .subscribe(format!("{prefix}.>"))
        .await
        .expect("subscribe");
    let mut rooms = bus
        .subscribe(format!("{prefix}.room.*"))
        .await
        .expect("subscribe");
    bus.ping().await.expect("ping");
    // Publications made after a subscription returned reach it, in order
    // per subject; patterns filter.
    for i in 0..20u8 {
        bus.publish(format!("{prefix}.room.r"), Bytes::from(vec![i]))
            .await
            .expect("publish");
    }
    bus.publish(format!("{prefix}.nodes"), Bytes::from_static(b"n"))
        .await
        .expect("publish");
    bus.publish("elsewhere.room.r".into(), Bytes::from_static(b"x"))
        .await
        .expect("publish");
    for i in 0..20u8 {
        let m = recv(&mut all).await;
        assert_eq!(
            (m.subject.as_str(), &m.payload[..]),
            (&*format!("{prefix}.room.r"), &[i][..])
        );
        assert_eq!(recv(&mut rooms).await.payload, Bytes::from(vec![i]));
    }
    let m = recv(&mut all).await;
    assert_eq!(
        (m.subject, m.payload),
        (format!("{prefix}.nodes"), Bytes::from_static(b"n"))
    );
    // A dropped receiver is a gone subscription: publishing goes on.
    drop(rooms);
    bus.publish(format!("{prefix}.room.r"), Bytes::from_static(b"z"))
        .await
        .expect("publish after a subscriber left");
    assert_eq!(recv(&mut all).await.payload, Bytes::from_static(b"z"));
}

async fn recv(
    rx: &mut tokio::sync::mpsc::Receiver<mesh_core::cluster::BusMessage>,
) -> mesh_core::cluster::BusMessage {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a publication in time")
        .expect("subscription open")
}

#[tokio::test]
async fn the_local_bus_passes_the_bus_suite() {
    bus_suite(Arc::new(LocalBus::new()), "suite").await;
}

#[tokio::test]
async fn nats_passes_the_bus_suite() {
    let Ok(url) = std::env::var("MESH_TEST_NATS") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "MESH_TEST_NATS is not set: CI must run the NATS tests"
        );
        eprintln!("skipped: MESH_TEST_NATS is not set");
        return;
    };
    let bus = NatsBus::connect(&url, "bus-suite")
        .await
        .expect("connect to NATS");
    let prefix = format!("suite{}", &uuid_hex()[..8]);
    bus_suite(Arc::new(bus), &prefix).await;
}

fn uuid_hex() -> String {
    RoomId::new().to_string().replace('-', "")
}

// ---- two nodes, one store, a lossy bus ----

struct Node {
    service: Service,
}

async fn node(store: &Arc<DynStore>, bus: &LocalBus, name: &str) -> Node {
    let service = Service::builder()
        .dyn_store(store.clone())
        .build()
        .expect("service");
    let config = ClusterConfig::new(NodeId::new(name).expect("node id"));
    service
        .join_cluster(Arc::new(bus.clone()), config)
        .await
        .expect("join");
    Node { service }
}

struct Client {
    conn: PeerConnection,
    inbox: Inbox,
}

impl Client {
    /// Registers `name` on `home` and connects it to `node`.
    async fn new(home: &Node, node: &Node, name: &str) -> (Self, Identity) {
        let reg = home
            .service
            .register(RegisterRequest {
                username: name.into(),
                password: "correct horse battery".into(),
                ..Default::default()
            })
            .await
            .expect("register");
        let identity = home.service.authenticate(&reg.token).await.expect("auth");
        let (to, inbox) = in_process(1024);
        let mut conn = node
            .service
            .open_connection(identity.clone(), to)
            .await
            .expect("connect");
        conn.handle(IncomingFrame::new(ClientRequest::Hello(Hello::default())))
            .await;
        (Self { conn, inbox }, identity)
    }

    async fn send(&mut self, room: RoomId, content: &str) {
        let send = ClientRequest::MessageSend {
            room_id: room,
            content: content.into(),
            client_id: Some(content.into()),
        };
        self.conn
            .handle(IncomingFrame::request(content, send))
            .await;
    }

    /// Messages of `room` until one with `seq` at least `until`.
    async fn messages_until(&mut self, room: RoomId, until: u64) -> Vec<Message> {
        let mut got: Vec<Message> = Vec::new();
        while !got.iter().any(|m| m.seq >= until) {
            let delivery = tokio::time::timeout(WAIT, self.inbox.recv())
                .await
                .expect("a frame in time")
                .expect("open");
            if let Delivery::Frame(frame) = delivery
                && let ServerEvent::MessageCreated { message } = frame.event
                && message.room_id == room
            {
                got.push(message);
            }
        }
        got
    }
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Alice on node a, Bob on node b, in one room; Bob has seen nothing yet.
async fn two_nodes() -> (LocalBus, Node, Node, Client, Client, RoomId) {
    let store = MemoryStore::new().into_dyn();
    let bus = LocalBus::new();
    let a = node(&store, &bus, "a").await;
    let b = node(&store, &bus, "b").await;
    let (alice, alice_id) = Client::new(&a, &a, "alice").await;
    let room = a
        .service
        .create_room(
            &alice_id,
            CreateRoomRequest {
                name: "lossy".into(),
                ..Default::default()
            },
        )
        .await
        .expect("room");
    let (mut bob, _) = Client::new(&a, &b, "bob").await;
    let join = ClientRequest::RoomJoin { room_id: room.id };
    bob.conn.handle(IncomingFrame::request("j", join)).await;
    (bus, a, b, alice, bob, room.id)
}

fn is_message(_subject: &str, payload: &[u8]) -> bool {
    String::from_utf8_lossy(payload).contains("\"message_created\"")
}

#[tokio::test]
async fn a_message_the_bus_loses_before_a_quiet_spell_still_arrives() {
    let (bus, _a, _b, mut alice, mut bob, room) = two_nodes().await;
    alice.send(room, "one").await;
    assert_eq!(seqs(&bob.messages_until(room, 1).await), vec![1]);
    // The bus loses the next message, and then nothing is sent at all:
    // node b's sweep finds it in the store.
    bus.drop_when(Some(Arc::new(is_message)));
    alice.send(room, "two").await;
    let got = bob.messages_until(room, 2).await;
    assert_eq!(seqs(&got), vec![2]);
    assert_eq!(got[0].content, "two");
    assert!(bus.dropped() >= 1);
    // Nothing more (no second copy) comes: the next one is 3.
    bus.drop_when(None);
    alice.send(room, "three").await;
    assert_eq!(seqs(&bob.messages_until(room, 3).await), vec![3]);
}

#[tokio::test]
async fn a_gap_in_the_live_stream_is_filled_from_the_store_in_order() {
    let (bus, _a, _b, mut alice, mut bob, room) = two_nodes().await;
    alice.send(room, "one").await;
    assert_eq!(seqs(&bob.messages_until(room, 1).await), vec![1]);
    // Only "two" is lost; "three" shows node b the gap.
    bus.drop_when(Some(Arc::new(|s: &str, p: &[u8]| {
        is_message(s, p) && String::from_utf8_lossy(p).contains("\"content\":\"two\"")
    })));
    alice.send(room, "two").await;
    alice.send(room, "three").await;
    let got = bob.messages_until(room, 3).await;
    assert_eq!(seqs(&got), vec![2, 3], "filled in order, once");
    bus.drop_when(None);
    alice.send(room, "four").await;
    assert_eq!(seqs(&bob.messages_until(room, 4).await), vec![4]);
}

/// Waits (a hang guard of 10 s) until `done` holds, letting the runtime's
/// other tasks run in between.
async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: timed out"));
}

#[tokio::test]
async fn a_node_listens_to_a_room_only_while_it_has_connections_in_it() {
    let (bus, a, b, mut alice, bob, room) = two_nodes().await;
    let subject = format!("mesh.room.{room}");
    let listening = |bus: &LocalBus| {
        bus.subscriptions()
            .iter()
            .filter(|s| **s == subject)
            .count()
    };
    until("both nodes listen", || listening(&bus) == 2).await;
    assert!(bus.subscriptions().contains(&"mesh.nodes".to_owned()));
    // Bob, node b's only connection in the room, leaves: node b stops.
    drop(bob);
    until("node b stops", || listening(&bus) == 1).await;
    // Carol connects to node b, in no room yet, and joins through node a:
    // node b hears of the new member on the nodes' subject, subscribes her
    // connection, and listens again; she gets the next message.
    let (mut carol, carol_id) = Client::new(&a, &b, "carol").await;
    a.service.join_room(&carol_id, room).await.expect("join");
    until("node b listens again", || listening(&bus) == 2).await;
    alice.send(room, "for carol").await;
    let got = carol.messages_until(room, 1).await;
    assert_eq!(got.last().map(|m| m.content.as_str()), Some("for carol"));
}
