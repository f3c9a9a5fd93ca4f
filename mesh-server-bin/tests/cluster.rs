//! Three `mesh-server` processes on one PostgreSQL and one NATS: users on
//! different nodes chat in one room, see each other's presence and typing,
//! call each other (WebRTC signals, TURN credentials from one secret) and
//! open P2P sessions across nodes (announced, relayed, with per-user relay
//! budgets across nodes);
//! a node killed with `kill -9` mid-chat loses nothing acknowledged and its
//! users go offline everywhere within the node time-out.
//!
//! Each test has a database of its own and a subject prefix of its own on
//! the NATS that `scripts/services.sh` starts (`MESH_TEST_POSTGRES`,
//! `MESH_TEST_NATS`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use common::agent::{Agent, Tweaks, attempt, guard};
use common::process::{ServerProcess, start_binary};
use common::relay::{Grant, ask, is_bound, refusal, udp_client};
use common::services::{pg_database, service_url};
use common::{TestServer, WsClient};
use mesh_core::auth::turn::mint;
use mesh_core::client::Event;
use mesh_core::cluster::nats::NatsBus;
use mesh_core::cluster::{Bus, ClusterEvent, Envelope};
use mesh_core::p2p::{IncomingSession, OutgoingSession, PathKind, ReceiveOptions, SendOptions};
use mesh_core::protocol::SessionKind;
use mesh_core::protocol::http::CreateRoomRequest;
use mesh_core::relay::RefuseCode;
use serde_json::{Value, json};

/// Heartbeats every 200 ms, a silent node gone after 1.5 s: the
/// documented defaults are 5 s and 15 s; the tests run the same code
/// faster.
const HEARTBEAT_MS: &str = "200";
const NODE_TIMEOUT_MS: &str = "1500";

struct Cluster {
    url: String,
    nats: String,
    prefix: String,
    data: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Option<Self> {
        let nats = service_url("MESH_TEST_NATS", "NATS")?;
        let url = pg_database().await?;
        Some(Self {
            url,
            nats,
            prefix: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            // One data folder for every node: the signing keys the first
            // node writes are the ones all of them use.
            data: tempfile::tempdir().expect("dir"),
        })
    }

    fn start(&self, name: &str) -> ServerProcess {
        self.start_with(name, &[])
    }

    /// Nodes named `names`, each with the flags `more`, started in order.
    fn start_all(&self, names: &[&str], more: &[&str]) -> Vec<ServerProcess> {
        names.iter().map(|n| self.start_with(n, more)).collect()
    }

    /// A node with more flags.
    fn start_with(&self, name: &str, more: &[&str]) -> ServerProcess {
        start_node(
            self.data.path(),
            &self.url,
            &self.nats,
            &self.prefix,
            name,
            more,
        )
    }
}

fn start_node(
    data: &Path,
    url: &str,
    nats: &str,
    prefix: &str,
    name: &str,
    more: &[&str],
) -> ServerProcess {
    let mut flags = vec![
        "--store",
        url,
        "--bus",
        nats,
        "--bus-prefix",
        prefix,
        "--node-id",
        name,
        "--cluster-heartbeat-ms",
        HEARTBEAT_MS,
        "--cluster-node-timeout-ms",
        NODE_TIMEOUT_MS,
    ];
    flags.extend_from_slice(more);
    start_binary(data, &flags).expect("a node starts")
}

async fn hello(node: &ServerProcess, token: &str, since: Value) -> WsClient {
    TestServer::attach(node.addr)
        .ws_with_hello(token, json!({ "since": since }))
        .await
}

async fn presence_of(ws: &mut WsClient, user: &str, status: &str) {
    ws.expect_where("presence.update", |f| {
        f["payload"]["user_id"] == user && f["payload"]["status"] == status
    })
    .await;
}

/// The seqs of `messages`, checked to be 1..=n in order, each once.
fn assert_exactly_once_in_order(messages: &[Value], n: u64, who: &str) {
    let seqs: Vec<u64> = messages.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "{who} saw every message once, in order"
    );
}

#[tokio::test]
async fn users_on_three_nodes_chat_type_and_see_each_other() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    // Every node hands out TURN credentials for one coturn.
    let turn = ["--turn-url", "turn:127.0.0.1:3478"];
    let nodes = cluster.start_all(&["a", "b", "c"], &turn);
    let on = |i: usize| TestServer::attach(nodes[i].addr);
    let (alice, alice_token) = on(0).register("alice").await;
    let (bob, bob_token) = on(1).register("bob").await;
    let (carol, carol_token) = on(2).register("carol").await;
    let room = on(0).create_room(&alice_token, "everyone", "public").await;
    for (i, token) in [(1, &bob_token), (2, &carol_token)] {
        let (status, body) = on(i)
            .post(&format!("/api/rooms/{room}/join"), Some(token), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let id = |user: &Value| user["id"].as_str().expect("id").to_owned();
    let (alice, bob, carol) = (id(&alice), id(&bob), id(&carol));

    let mut wa = hello(&nodes[0], &alice_token, json!({})).await;
    let mut wb = hello(&nodes[1], &bob_token, json!({})).await;
    presence_of(&mut wa, &bob, "online").await;
    let mut wc = hello(&nodes[2], &carol_token, json!({})).await;
    presence_of(&mut wa, &carol, "online").await;
    presence_of(&mut wb, &carol, "online").await;
    // A node's own members API shows presence from the others.
    let (status, members) = on(2)
        .get(&format!("/api/rooms/{room}/members"), &carol_token)
        .await;
    assert_eq!(status, 200);
    let alice_there = members["members"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["user"]["id"] == alice.as_str())
                .cloned()
        })
        .expect("alice is a member");
    assert_eq!(alice_there["presence"], "online", "{members}");

    // Typing crosses nodes.
    wb.send(
        "chat.typing",
        json!({"room_id": room, "typing": true}),
        None,
    )
    .await;
    for ws in [&mut wa, &mut wc] {
        ws.expect_where("chat.typing", |f| {
            f["payload"]["user_id"] == bob.as_str() && f["payload"]["typing"] == true
        })
        .await;
    }

    // A call: WebRTC signals cross nodes, only to their target, with the
    // sender filled in; a peer no node has is not found.
    let offer = json!({"room_id": room, "target_peer_id": wb.peer_id, "sdp": "v=0"});
    wa.send("rtc.offer", offer, None).await;
    let got = wb.expect("rtc.offer").await;
    assert_eq!(got["payload"]["from_user_id"], alice.as_str(), "{got}");
    assert_eq!(got["payload"]["from_peer_id"], wa.peer_id.as_str(), "{got}");
    assert_eq!(got["payload"]["sdp"], "v=0");
    let answer = json!({"room_id": room, "target_peer_id": wa.peer_id, "sdp": "v=0 answer"});
    wb.send("rtc.answer", answer, None).await;
    let got = wa.expect("rtc.answer").await;
    assert_eq!(got["payload"]["from_user_id"], bob.as_str(), "{got}");
    let nobody = json!({"room_id": room, "target_peer_id": uuid::Uuid::new_v4(), "sdp": "x"});
    let refused = wa.request("rtc.offer", nobody, "lost").await;
    assert_eq!(refused["payload"]["code"], "not_found", "{refused}");

    // The TURN credentials of every node are minted from the one shared
    // secret: coturn takes those of any node.
    let secret = std::fs::read_to_string(cluster.data.path().join("turn.secret")).expect("secret");
    for (i, token) in [(0, &alice_token), (1, &bob_token), (2, &carol_token)] {
        let (status, ice) = on(i).get("/api/rtc/ice-servers", token).await;
        assert_eq!(status, 200, "{ice}");
        let servers = ice["ice_servers"].as_array().expect("servers");
        let turn = servers
            .iter()
            .find(|s| s["credential"].is_string())
            .expect("TURN");
        let username = turn["username"].as_str().expect("username");
        let (expiry, user) = username.split_once(':').expect("expiry:user");
        let minted = mint(
            secret.trim().as_bytes(),
            user,
            expiry.parse().expect("expiry"),
        );
        assert_eq!(turn["credential"], minted.credential.as_str(), "node {i}");
    }

    // A P2P session from alice on node a to carol on node c: announced to
    // carol by her node.
    let request = json!({"room_id": room, "target_peer_id": wc.peer_id, "kind": "file"});
    let created = wa.request("p2p.session.request", request, "p2p").await;
    assert_eq!(created["type"], "p2p.session.created", "{created}");
    let to_carol = wc.expect("p2p.session.created").await;
    assert_eq!(
        to_carol["payload"]["session"],
        created["payload"]["session"]
    );
    assert_eq!(
        to_carol["payload"]["session_token"],
        created["payload"]["session_token"]
    );

    // Messages from all three nodes, interleaved: everyone sees 1..=N.
    const EACH: u64 = 10;
    for i in 0..EACH {
        for (ws, who) in [(&mut wa, "a"), (&mut wb, "b"), (&mut wc, "c")] {
            ws.send(
                "chat.message.send",
                json!({"room_id": room, "content": format!("{who}{i}"), "client_id": format!("{who}{i}")}),
                None,
            )
            .await;
        }
    }
    let n = 3 * EACH;
    for (ws, who) in [(&mut wa, "alice"), (&mut wb, "bob"), (&mut wc, "carol")] {
        let got = ws.messages_until(&room, n).await;
        assert_exactly_once_in_order(&got, n, who);
    }

    // Carol leaves: offline for the others, on both other nodes.
    drop(wc);
    presence_of(&mut wa, &carol, "offline").await;
    presence_of(&mut wb, &carol, "offline").await;
    for node in nodes {
        node.kill();
    }
}

/// Waits for the first event of `agent` that `pick` takes.
async fn event_where<T>(agent: &mut Agent, what: &str, pick: impl Fn(Event) -> Option<T>) -> T {
    guard(what, async {
        loop {
            match agent.events.next().await {
                Some(event) => {
                    if let Some(found) = pick(event) {
                        return found;
                    }
                }
                None => panic!("{what}: the event stream ended"),
            }
        }
    })
    .await
}

/// Sends `len` bytes named `name` over `out` to `inc`, and checks they
/// arrive whole.
async fn a_file_crosses(out: OutgoingSession, inc: IncomingSession, name: &str, len: u32) {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let path = src.path().join(name);
    std::fs::write(&path, &bytes).expect("write");
    let dest = dst.path().to_owned();
    let receiver = tokio::spawn(async move {
        inc.receive_file(&dest, &ReceiveOptions::default(), |_| {})
            .await
    });
    guard(
        "send",
        out.send_file(&path, &SendOptions::default(), |_| {}),
    )
    .await
    .expect("sent");
    guard("receive", receiver)
        .await
        .expect("join")
        .expect("received");
    assert_eq!(std::fs::read(dst.path().join(name)).expect("read"), bytes);
}

/// Alice's agent on node `a`, bob's on node `b` (with `bob_tweaks`), both
/// in a room alice made, and alice's node aware of bob's agent: it heard
/// he joined (node b tells its nodes his presence before the membership).
async fn two_agents(
    a: &ServerProcess,
    b: &ServerProcess,
    bob_tweaks: Tweaks,
) -> (Agent, Agent, mesh_core::protocol::RoomId) {
    let mut alice = Agent::start(&TestServer::attach(a.addr), "alice", Tweaks::default()).await;
    let bob = Agent::start(&TestServer::attach(b.addr), "bob", bob_tweaks).await;
    let room = guard(
        "create room",
        alice.client.create_room(&CreateRoomRequest {
            name: "p2p".into(),
            ..CreateRoomRequest::default()
        }),
    )
    .await
    .expect("room")
    .id;
    guard("join", bob.client.join_room(room))
        .await
        .expect("join");
    let bob_user = bob.client.me().expect("welcomed").1.id;
    event_where(&mut alice, "bob joined", |e| match e {
        Event::RoomJoined { user, .. } if user.id == bob_user => Some(()),
        _ => None,
    })
    .await;
    (alice, bob, room)
}

/// Agents on two nodes: a session asked for on one node is announced on
/// both with each agent's details; the token, signed by the first node,
/// verifies at the agent on the second (one set of keys); a file crosses
/// over QUIC; closing on one side ends the session on both; and a second
/// session ends at the initiator when the target's node is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_two_nodes_open_a_p2p_session_and_send_a_file() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let nodes = cluster.start_all(&["a", "b"], &[]);
    let (mut alice, mut bob, room) = two_agents(&nodes[0], &nodes[1], Tweaks::default()).await;

    let grant = guard(
        "p2p.session.request",
        alice
            .client
            .request_p2p_session(room, bob.me, SessionKind::File),
    )
    .await
    .expect("node a grants a session with a peer on node b");
    assert_eq!(grant.target, bob.info, "bob's details, from his node");
    let to_bob = bob.grant(grant.session.id).await;
    assert_eq!(to_bob.session_token, grant.session_token);
    assert_eq!(to_bob.initiator, alice.info);
    bob.expect(&to_bob);

    let (out, inc) = attempt(
        &alice.endpoint,
        &grant.target,
        grant.session.id,
        &grant.session_token,
        &bob,
    )
    .await;
    let inc = inc.expect("bob's agent verifies node a's token");
    a_file_crosses(out.expect("alice connects"), inc, "across.bin", 200_000).await;

    // Bob closes it on his node: alice hears it from hers.
    bob.client.close_p2p_session(grant.session.id);
    let closed = |id| {
        move |e| match e {
            Event::P2pSessionClosed { session_id, reason } if session_id == id => Some(reason),
            _ => None,
        }
    };
    let reason = event_where(&mut alice, "closed at alice", closed(grant.session.id)).await;
    assert_eq!(reason, "closed");
    let reason = event_where(&mut bob, "closed at bob", closed(grant.session.id)).await;
    assert_eq!(reason, "closed");

    // A second session; bob's node dies: alice's ends within the node
    // time-out, with nothing from node b.
    let second = guard(
        "second session",
        alice
            .client
            .request_p2p_session(room, bob.me, SessionKind::Terminal),
    )
    .await
    .expect("granted");
    bob.grant(second.session.id).await;
    let mut nodes = nodes.into_iter();
    let (node_a, node_b) = (nodes.next().expect("a"), nodes.next().expect("b"));
    node_b.kill();
    let reason = event_where(&mut alice, "ended at alice", closed(second.session.id)).await;
    assert_eq!(reason, "peer_disconnected");
    node_a.kill();
}

/// A session between agents on two nodes that cannot reach each other
/// directly: the node that granted it relays it, both grants name that
/// relay's public address, and the agent on the other node binds there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_across_nodes_is_relayed_by_the_granting_node() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let relaying = ["--relay-public-addr", "127.0.0.1"];
    let nodes = cluster.start_all(&["a", "b"], &relaying);
    // Bob announces a port nothing answers at: no direct path.
    let unreachable = Tweaks {
        announce: Some(vec!["127.0.0.1:9".into()]),
        ..Tweaks::default()
    };
    let (alice, mut bob, room) = two_agents(&nodes[0], &nodes[1], unreachable).await;
    for agent in [&alice, &bob] {
        agent
            .endpoint
            .use_server(agent.client.p2p_paths(true).await);
    }

    let grant = guard(
        "p2p.session.request",
        alice
            .client
            .request_p2p_session(room, bob.me, SessionKind::File),
    )
    .await
    .expect("granted");
    let node_a_relay = format!(
        "127.0.0.1:{}",
        alice
            .client
            .server_p2p()
            .and_then(|p| p.udp_port)
            .expect("node a's UDP port")
    );
    let relay = grant.relay.clone().expect("alice's relay grant");
    assert_eq!(relay.addr.as_deref(), Some(node_a_relay.as_str()));
    let to_bob = bob.grant(grant.session.id).await;
    let bob_relay = to_bob
        .relay
        .clone()
        .expect("bob's relay grant, from node a");
    assert_eq!(
        bob_relay.addr.as_deref(),
        Some(node_a_relay.as_str()),
        "node a's relay, not his own node's"
    );
    assert!(
        bob.endpoint
            .expect_announced(
                &to_bob.session,
                &to_bob.initiator,
                &to_bob.session_token,
                Some(&bob_relay)
            )
            .expect("announced")
    );

    let (out, inc) = guard("connect and accept", async {
        tokio::join!(
            alice.endpoint.connect_to_via(
                &grant.target,
                grant.session.id,
                &grant.session_token,
                Some(&relay)
            ),
            bob.accept()
        )
    })
    .await;
    let out = out.expect("alice reaches bob through node a's relay");
    assert_eq!(out.path(), PathKind::Relay);
    let inc = inc.expect("bob accepts");
    a_file_crosses(out, inc, "relayed.bin", 300_000).await;
    for node in nodes {
        node.kill();
    }
}

/// A connection that said hello on `node`, and the node's UDP port (from
/// the welcome).
async fn hello_with_udp(node: &ServerProcess, token: &str) -> (WsClient, SocketAddr) {
    let mut ws = WsClient::connect(node.addr, token).await;
    ws.send("system.hello", json!({}), Some("hello")).await;
    let welcome = ws.expect("system.welcome").await;
    ws.peer_id = welcome["payload"]["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned();
    let port = welcome["payload"]["p2p"]["udp_port"]
        .as_u64()
        .expect("a UDP port");
    let port = u16::try_from(port).expect("port");
    (ws, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// `from` asks for a session with `to` in `room`: the grant `from` got.
async fn relay_grant(from: &mut WsClient, to: &mut WsClient, room: &str) -> Grant {
    let created = from
        .request(
            "p2p.session.request",
            json!({"room_id": room, "target_peer_id": to.peer_id, "kind": "file"}),
            "s",
        )
        .await;
    assert_eq!(created["type"], "p2p.session.created", "{created}");
    to.expect("p2p.session.created").await;
    Grant::of(&created["payload"])
}

/// Per-user relay budgets hold across nodes: with one relayed session
/// allowed per user, alice's session relayed by node a keeps node b from
/// relaying another of hers, once node b has heard node a's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_budgets_of_a_user_hold_across_nodes() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let one_each = ["--relay-user-sessions", "1"];
    let nodes = cluster.start_all(&["a", "b"], &one_each);
    let on = |i: usize| TestServer::attach(nodes[i].addr);
    let (alice, alice_token) = on(0).register("alice").await;
    let (_, bob_token) = on(0).register("bob").await;
    let (_, carol_token) = on(1).register("carol").await;
    let alice_id = alice["id"].as_str().expect("id").to_owned();
    let room = on(0).create_room(&alice_token, "relayed", "public").await;
    for (i, token) in [(0, &bob_token), (1, &carol_token)] {
        let (status, body) = on(i)
            .post(&format!("/api/rooms/{room}/join"), Some(token), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // What node a's relay reports, as every node hears it.
    let bus = NatsBus::connect(&cluster.nats, "test").await.expect("NATS");
    let mut reports = bus
        .subscribe(format!("{}.nodes", cluster.prefix))
        .await
        .expect("subscribe");

    let (mut alice_a, udp_a) = hello_with_udp(&nodes[0], &alice_token).await;
    let (mut bob_a, _) = hello_with_udp(&nodes[0], &bob_token).await;
    let first = relay_grant(&mut alice_a, &mut bob_a, &room).await;
    let sock = udp_client(udp_a).await;
    assert!(
        is_bound(&ask(&sock, &first.bind()).await, first.sid),
        "node a relays alice's first"
    );

    // Two of node a's reports naming alice: node b has applied the first.
    let mut heard = 0;
    while heard < 2 {
        let message = guard("node a's relay report", reports.recv())
            .await
            .expect("subscribed");
        let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload) else {
            continue;
        };
        if let ClusterEvent::RelayUsage { users } = envelope.event
            && envelope.node.as_str() == "a"
            && users
                .iter()
                .any(|u| u.user_id.to_string() == alice_id && u.sessions == 1)
        {
            heard += 1;
        }
    }
    let (mut alice_b, udp_b) = hello_with_udp(&nodes[1], &alice_token).await;
    let (mut carol_b, _) = hello_with_udp(&nodes[1], &carol_token).await;
    let second = relay_grant(&mut alice_b, &mut carol_b, &room).await;
    let sock_b = udp_client(udp_b).await;
    assert_eq!(
        refusal(&ask(&sock_b, &second.bind()).await),
        Some(RefuseCode::OverBudget),
        "alice's session on node a counts on node b"
    );
    // Carol's own budget is untouched: a session of hers with someone else
    // is relayed.
    let (_, dave_token) = on(1).register("dave").await;
    let (status, body) = on(1)
        .post(
            &format!("/api/rooms/{room}/join"),
            Some(&dave_token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (mut dave_b, _) = hello_with_udp(&nodes[1], &dave_token).await;
    let third = relay_grant(&mut carol_b, &mut dave_b, &room).await;
    assert!(is_bound(&ask(&sock_b, &third.bind()).await, third.sid));
    for node in nodes {
        node.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_chat_loses_nothing() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let mut nodes: Vec<Option<ServerProcess>> = ["a", "b", "c"]
        .iter()
        .map(|n| Some(cluster.start(n)))
        .collect();
    let addr =
        |nodes: &Vec<Option<ServerProcess>>, i: usize| nodes[i].as_ref().expect("running").addr;
    let on = |a| TestServer::attach(a);
    let mut tokens = Vec::new();
    for (i, name) in ["writer0", "writer1", "writer2", "watcher", "dave"]
        .iter()
        .enumerate()
    {
        let (_, token) = on(addr(&nodes, i % 3)).register(name).await;
        tokens.push(token);
    }
    let room = on(addr(&nodes, 0))
        .create_room(&tokens[0], "busy", "public")
        .await;
    for token in &tokens[1..] {
        let (status, body) = on(addr(&nodes, 0))
            .post(&format!("/api/rooms/{room}/join"), Some(token), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let dave_id = {
        let (_, me) = on(addr(&nodes, 2)).get("/api/auth/me", &tokens[4]).await;
        me["user"]["id"]
            .as_str()
            .map(str::to_owned)
            .expect("dave's id")
    };
    // The watcher on node a; dave only on node c, the one to die.
    let mut watcher = hello(nodes[0].as_ref().expect("a"), &tokens[3], json!({})).await;
    let _dave = hello(nodes[2].as_ref().expect("c"), &tokens[4], json!({})).await;
    presence_of(&mut watcher, &dave_id, "online").await;
    // One writer per node.
    let mut writers = Vec::new();
    for i in 0..3 {
        writers.push(hello(nodes[i].as_ref().expect("node"), &tokens[i], json!({})).await);
    }

    // Each writer sends PER messages; node c dies halfway through.
    const PER: usize = 40;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut unacked: Vec<Vec<String>> = vec![Vec::new(); 3];
    for i in 0..PER {
        if i == PER / 2 {
            nodes[2].take().expect("c").kill();
        }
        for (w, ws) in writers.iter_mut().enumerate() {
            let cid = format!("w{w}-{i}");
            if w == 2 && i >= PER / 2 {
                unacked[w].push(cid);
                continue;
            }
            ws.send(
                "chat.message.send",
                json!({"room_id": room, "content": cid, "client_id": cid}),
                Some(&cid),
            )
            .await;
            unacked[w].push(cid);
        }
        // Collect the answers to what the live writers sent.
        for (w, ws) in writers.iter_mut().enumerate().take(2) {
            let cid = format!("w{w}-{i}");
            let ack = ws.reply(&cid).await;
            assert_eq!(ack["type"], "chat.message.created", "{ack}");
            acked.insert(
                cid.clone(),
                ack["payload"]["message"]["seq"].as_u64().expect("seq"),
            );
            unacked[w].retain(|c| *c != cid);
        }
    }
    // Writer 2's answers that came before its node died.
    let mut w2 = writers.pop().expect("w2");
    while let Some(frame) = w2.try_next().await {
        if frame["type"] == "chat.message.created"
            && let Some(id) = frame["id"].as_str()
        {
            acked.insert(
                id.to_owned(),
                frame["payload"]["message"]["seq"].as_u64().expect("seq"),
            );
            unacked[2].retain(|c| c != id);
        }
    }
    // It reconnects to node a with `since` and sends what was not
    // acknowledged again, with the same client ids (as the SDK does).
    let last_seen = acked.values().copied().max().unwrap_or(0);
    let mut w2 = hello(
        nodes[0].as_ref().expect("a"),
        &tokens[2],
        json!({ room.clone(): last_seen }),
    )
    .await;
    for cid in &unacked[2] {
        let ack = w2
            .request(
                "chat.message.send",
                json!({"room_id": room, "content": cid, "client_id": cid}),
                cid,
            )
            .await;
        assert_eq!(ack["type"], "chat.message.created", "{ack}");
        acked.insert(
            cid.clone(),
            ack["payload"]["message"]["seq"].as_u64().expect("seq"),
        );
    }

    // Every message once, seqs 1..=N, every acknowledged seq as told.
    let n = (3 * PER) as u64;
    assert_eq!(acked.len() as u64, n);
    let history = common::process::history(addr(&nodes, 1), &tokens[3], &room).await;
    assert_exactly_once_in_order(&history, n, "history");
    for m in &history {
        let cid = m["client_id"].as_str().expect("client id");
        assert_eq!(acked.get(cid), m["seq"].as_u64().as_ref(), "{cid}");
    }
    // The watcher on node a saw them all live, once, in order.
    let live = watcher.messages_until(&room, n).await;
    assert_exactly_once_in_order(&live, n, "the watcher");
    // Dave was only on the dead node: offline for the watcher.
    presence_of(&mut watcher, &dave_id, "offline").await;
}

/// A nats-server of the test's own (`MESH_TEST_NATS_BIN`), to stop and
/// start again on the same port.
struct OwnNats {
    bin: String,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn start() -> Option<Self> {
        let bin = service_url("MESH_TEST_NATS_BIN", "NATS")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nats = Self {
            bin,
            port,
            child: None,
        };
        nats.restart();
        Some(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again), and waits until it accepts connections.
    fn restart(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + common::WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server listens in time"
            );
            std::thread::yield_now();
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_chat_loses_and_duplicates_nothing() {
    let (Some(mut nats), Some(url)) = (OwnNats::start(), pg_database().await) else {
        return;
    };
    let data = tempfile::tempdir().expect("dir");
    let a = start_node(data.path(), &url, &nats.url(), "mesh", "a", &[]);
    let b = start_node(data.path(), &url, &nats.url(), "mesh", "b", &[]);
    let (_, alice_token) = TestServer::attach(a.addr).register("alice").await;
    let (_, bob_token) = TestServer::attach(b.addr).register("bob").await;
    let room = TestServer::attach(a.addr)
        .create_room(&alice_token, "through", "public")
        .await;
    let (status, body) = TestServer::attach(b.addr)
        .post(
            &format!("/api/rooms/{room}/join"),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut alice = hello(&a, &alice_token, json!({})).await;
    let mut bob = hello(&b, &bob_token, json!({})).await;
    let mut sent = 0u64;
    let send = async |ws: &mut WsClient, sent: &mut u64| {
        *sent += 1;
        let cid = format!("m{sent}");
        let ack = ws
            .request(
                "chat.message.send",
                json!({"room_id": room, "content": cid, "client_id": cid}),
                &cid,
            )
            .await;
        assert_eq!(ack["type"], "chat.message.created", "{ack}");
    };
    for _ in 0..5 {
        send(&mut alice, &mut sent).await;
    }
    assert_exactly_once_in_order(&bob.messages_until(&room, sent).await, sent, "bob, before");
    // NATS goes away: sends still succeed (the store has them), and bob's
    // node finds them in the store.
    nats.kill();
    for _ in 0..5 {
        send(&mut alice, &mut sent).await;
    }
    let during = bob.messages_until(&room, sent).await;
    assert_eq!(
        during
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect::<Vec<_>>(),
        (6..=10).collect::<Vec<_>>(),
        "bob, while NATS is down"
    );
    // NATS is back: the nodes reconnect, and delivery goes on.
    nats.restart();
    for _ in 0..5 {
        send(&mut alice, &mut sent).await;
    }
    let after = bob.messages_until(&room, sent).await;
    assert_eq!(
        after
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect::<Vec<_>>(),
        (11..=15).collect::<Vec<_>>(),
        "bob, after NATS is back"
    );
    let history = common::process::history(b.addr, &bob_token, &room).await;
    assert_exactly_once_in_order(&history, sent, "history");
}
