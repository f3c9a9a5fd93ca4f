//! The sans-IO client against the sans-IO server, end to end, in the style
//! of quinn-proto's `Pair` (`quinn-proto/src/tests/util.rs`): one test
//! drives both ends, with a virtual clock and a lossy link between them. No
//! sockets, no threads, no sleeps.
//!
//! - The client is [`ClientState`], fed exactly as the native driver feeds
//!   it (`client/native.rs`): open a socket when `poll_connect` says so,
//!   write what `poll_transmit` gives before reading the next frame, drop
//!   the socket on `poll_close` or once the state has moved on.
//! - The server is the [`Engine`] plus a [`MemoryStore`], with [`Server`]
//!   doing what `service::PeerConnection` does around them: parse the frame,
//!   store the message (deduplicated by `client_id`), tell the engine, page
//!   history in after a `system.hello` with `since`. The service itself
//!   reads the wall clock and needs tokio, so it cannot be driven here.
//! - Every frame crosses the link as JSON text, so the wire shapes are the
//!   real ones.
//! - The link models a WebSocket over TCP: a frame is never lost on its
//!   own. A loss *stalls* its direction (the stream is stuck until the
//!   connection is given up), which is what a dead route looks like to both
//!   ends; the heartbeats on either side are what notice it.
//! - Time moves only when a test jumps it to the next deadline of either
//!   end, so heartbeats, time-outs and backoff are exact to the millisecond.
//!
//! "bob" is a second user as a raw engine peer on a perfect network: his
//! frames go through the same parsing as the client's but skip the link.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::FutureExt;
use mesh_core::client::{
    Backoff, BackoffConfig, ClientConfig, ClientError, ClientState, Completion, ConnectionStatus,
    Event, Rng,
};
use mesh_core::engine::{Engine, EngineConfig, Output, PeerInfo};
use mesh_core::protocol::{
    ClientRequest, DeviceId, ErrorCode, Hello, Message, MessageId, OutgoingFrame, PeerId, Role,
    Room, RoomId, ServerEvent, Timestamp, User, UserId, Visibility, parse_client_frame,
};
use mesh_core::storage::memory::MemoryStore;
use mesh_core::storage::{AppendOutcome, HistoryPage, MAX_PAGE, Membership, NewMessage, Store};
use serde_json::{Map, Value, json};

/// How often clients ping (the engine announces it in `system.welcome`).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The client gives a connection up after this many silent heartbeats.
const DEAD_AFTER: u32 = 3;
/// The server gives a silent peer up after this: shorter than the client's
/// `DEAD_AFTER` heartbeats, so that when both ends would notice the same
/// silence, which one does is not a tie.
const SERVER_TIMEOUT: Duration = Duration::from_millis(2_500);
const BACKOFF: BackoffConfig = BackoffConfig {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(5),
};
const HANDSHAKE: Duration = Duration::from_secs(5);
/// The server pages history two messages at a time (the service reads
/// `MAX_PAGE`), so that even a short catch-up spans pages and live messages
/// arrive between them.
const PAGE: usize = 2;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_800_000_000_000 + ms)
}

fn user(name: &str) -> User {
    User {
        id: UserId::new(),
        username: name.into(),
        display_name: name.into(),
        created_at: at(0),
    }
}

/// Runs a store call. The memory store never waits (its lock is a std
/// `Mutex`), so one poll finishes it and no runtime is needed.
fn ready<T>(call: impl Future<Output = T>) -> T {
    call.now_or_never()
        .expect("the memory store answers without waiting")
}

/// A client frame as JSON text, the way `ClientState` writes its own.
fn wire_text(request: &ClientRequest, id: String) -> String {
    let mut value = serde_json::to_value(request).expect("requests serialize");
    if let Some(obj) = value.as_object_mut() {
        obj.insert("id".into(), Value::String(id));
    }
    value.to_string()
}

/// What crosses a socket: a text frame, or the socket's end (with why).
#[derive(Clone, Debug)]
enum Item {
    Text(String),
    Close(String),
}

// ----- the server -----

/// A socket the server accepted, authenticated as `user` by the upgrade.
#[derive(Debug)]
struct Accepted {
    user: User,
    device: DeviceId,
    /// `system.hello` was received.
    live: bool,
}

/// History still to page in for a peer that said `since`.
#[derive(Debug)]
struct Backfill {
    peer: PeerId,
    room: RoomId,
    after: u64,
}

type Origin = Option<(PeerId, Option<String>)>;

/// The engine and the store, with the service's frame handling around them.
#[derive(Debug)]
struct Server {
    engine: Engine,
    store: MemoryStore,
    accepted: HashMap<PeerId, Accepted>,
    backfills: VecDeque<Backfill>,
    /// When set, a stored message reaches the engine one history page late,
    /// as when the service's append task is slower than the connection's
    /// history reads (they run concurrently there).
    announce_late: bool,
    unannounced: VecDeque<(Message, Origin)>,
    /// Frames and closes for peers, in the order the server made them.
    out: VecDeque<(PeerId, Item)>,
    /// Peers the engine closed, with its reason.
    closed: Vec<(PeerId, String)>,
    /// Sends the store answered with a message it already had.
    duplicates: usize,
}

impl Server {
    fn new() -> Self {
        let config = EngineConfig {
            heartbeat_interval: HEARTBEAT,
            heartbeat_timeout: SERVER_TIMEOUT,
            ..EngineConfig::default()
        };
        Self {
            engine: Engine::new(config),
            store: MemoryStore::new(),
            accepted: HashMap::new(),
            backfills: VecDeque::new(),
            announce_late: false,
            unannounced: VecDeque::new(),
            out: VecDeque::new(),
            closed: Vec::new(),
            duplicates: 0,
        }
    }

    fn accept(&mut self, peer: PeerId, user: &User) {
        let accepted = Accepted {
            user: user.clone(),
            device: DeviceId::new(),
            live: false,
        };
        self.accepted.insert(peer, accepted);
    }

    /// One text frame from `peer`, handled as `PeerConnection::handle_frame`
    /// does (without its rate limit: nothing here sends fast enough).
    fn handle_text(&mut self, now: Timestamp, peer: PeerId, text: &str) {
        let Some(live) = self.accepted.get(&peer).map(|a| a.live) else {
            // Closed by the engine already: a late frame on a dead socket.
            return;
        };
        let frame = match parse_client_frame(text) {
            Ok(frame) => frame,
            Err((id, payload)) => return self.reply(peer, id, ServerEvent::Error(payload)),
        };
        if live {
            self.engine.heard_from(now, peer);
        }
        let id = frame.id;
        match frame.event {
            ClientRequest::Hello(hello) if !live => self.hello(now, peer, hello, id),
            ClientRequest::Hello(_) => {
                let refusal = ServerEvent::error(
                    ErrorCode::InvalidRequest,
                    "system.hello was already received",
                );
                self.reply(peer, id, refusal);
            }
            _ if !live => {
                let refusal =
                    ServerEvent::error(ErrorCode::InvalidRequest, "send system.hello first");
                self.reply(peer, id, refusal);
            }
            ClientRequest::Ping(_) => self.engine.ping(now, peer, id),
            ClientRequest::MessageSend {
                room_id,
                content,
                client_id,
            } => self.send_message(now, peer, id, room_id, content, client_id),
            other => panic!("the pair's server does not serve {}", other.type_name()),
        }
        self.drain();
    }

    fn hello(&mut self, now: Timestamp, peer: PeerId, hello: Hello, id: Option<String>) {
        let Some(accepted) = self.accepted.get_mut(&peer) else {
            return;
        };
        accepted.live = true;
        let (user, device) = (accepted.user.clone(), accepted.device);
        let rooms = ready(self.store.room_ids_of(user.id)).expect("room ids");
        // Resuming only makes sense for rooms the user is in.
        let mut since: Vec<(RoomId, u64)> = hello
            .since
            .unwrap_or_default()
            .into_iter()
            .filter(|(room, _)| rooms.contains(room))
            .collect();
        since.sort();
        let info = PeerInfo {
            peer_id: peer,
            user,
            device_id: device,
            p2p: None,
        };
        self.engine
            .connect(now, info, rooms, since.iter().copied().collect(), id);
        let jobs = since
            .into_iter()
            .map(|(room, after)| Backfill { peer, room, after });
        self.backfills.extend(jobs);
    }

    fn send_message(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        id: Option<String>,
        room: RoomId,
        content: String,
        client_id: Option<String>,
    ) {
        if !self.engine.is_subscribed(peer, room) {
            let refusal = ServerEvent::error(ErrorCode::Forbidden, "join the room first");
            return self.reply(peer, id, refusal);
        }
        let checked = mesh_core::validate::content(&content).and_then(|()| {
            client_id
                .as_deref()
                .map_or(Ok(()), mesh_core::validate::client_id)
        });
        if let Err(e) = checked {
            return self.reply(peer, id, ServerEvent::Error(e.to_payload()));
        }
        let Some(sender) = self.accepted.get(&peer).map(|a| a.user.clone()) else {
            return;
        };
        let message = NewMessage {
            id: MessageId::new(),
            room_id: room,
            sender,
            content,
            created_at: now,
            client_id,
        };
        match ready(self.store.append_message(message)).expect("append") {
            AppendOutcome::Created(message) if self.announce_late => {
                self.unannounced.push_back((message, Some((peer, id))));
            }
            AppendOutcome::Created(message) => {
                self.engine.message_created(now, message, Some((peer, id)))
            }
            // Stored before (a retry whose first answer was lost): the same
            // message again, to the sender only.
            AppendOutcome::Duplicate(message) => {
                self.duplicates += 1;
                self.reply(peer, id, ServerEvent::MessageCreated { message })
            }
        }
    }

    /// Pages in one batch of history, as the service's backfill loop does
    /// between two awaits. Whether there was one.
    fn backfill_step(&mut self, now: Timestamp) -> bool {
        let Some(mut job) = self.backfills.pop_front() else {
            return false;
        };
        if !self.accepted.contains_key(&job.peer) {
            return true; // the connection ended meanwhile
        }
        let query = HistoryPage::After(job.after);
        let page = ready(self.store.messages(job.room, query, PAGE)).expect("a page");
        if let Some(last) = page.messages.last() {
            job.after = last.seq;
        }
        let done = !page.has_more;
        self.engine
            .backfill(now, job.peer, job.room, page.messages, done);
        if !done {
            self.backfills.push_back(job);
        }
        self.drain();
        true
    }

    /// Whether `peer`'s history is still being paged in.
    fn catching_up(&self, peer: PeerId) -> bool {
        self.backfills.iter().any(|b| b.peer == peer)
    }

    /// Tells the engine about the messages stored but not yet announced.
    fn announce_step(&mut self, now: Timestamp) -> bool {
        let late: Vec<_> = self.unannounced.drain(..).collect();
        let any = !late.is_empty();
        for (message, origin) in late {
            self.engine.message_created(now, message, origin);
        }
        self.drain();
        any
    }

    /// The socket of `peer` ended.
    fn disconnect(&mut self, now: Timestamp, peer: PeerId) {
        if self.accepted.remove(&peer).is_some() {
            self.engine.disconnect(now, peer);
            self.drain();
        }
    }

    fn handle_timeout(&mut self, now: Timestamp) {
        self.engine.handle_timeout(now);
        self.drain();
    }

    /// A frame straight to one peer (what the hub's `send_direct` does),
    /// after everything the engine already queued.
    fn reply(&mut self, peer: PeerId, id: Option<String>, event: ServerEvent) {
        self.drain();
        let text = OutgoingFrame::reply(id, event).to_json();
        self.out.push_back((peer, Item::Text(text)));
    }

    fn drain(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send { to, frame } => {
                    let text = frame.to_json();
                    for peer in to {
                        self.out.push_back((peer, Item::Text(text.clone())));
                    }
                }
                Output::Close { peer, code, reason } => {
                    self.accepted.remove(&peer);
                    let why = format!("closed by the server ({}): {reason}", code.code());
                    self.out.push_back((peer, Item::Close(why)));
                    self.closed.push((peer, reason));
                }
                Output::SessionEnded { .. }
                | Output::Presence(_)
                | Output::RemoteSessionEnded { .. }
                | Output::RoomInterest { .. } => {}
            }
        }
    }
}

// ----- the link -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// One WebSocket between the client and the server.
#[derive(Debug)]
struct Socket {
    /// The server's name for it.
    peer: PeerId,
    up: VecDeque<Item>,
    down: VecDeque<Item>,
    up_stalled: bool,
    down_stalled: bool,
    /// The client still reads it.
    client_open: bool,
}

/// Seeded loss: each text frame stalls its direction with probability
/// `per_mille / 1000`.
#[derive(Debug)]
struct Loss {
    rng: Rng,
    per_mille: u64,
}

/// A frame as written, and whether the link lost it.
#[derive(Debug)]
struct Wire {
    at: Timestamp,
    socket: usize,
    dir: Dir,
    text: String,
    lost: bool,
}

impl Wire {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).expect("frames on the wire are JSON")
    }
}

#[derive(Debug)]
struct Link {
    /// Whether a socket can be opened at all.
    up: bool,
    sockets: Vec<Socket>,
    loss: Option<Loss>,
    wire: Vec<Wire>,
}

impl Link {
    /// Writes `item` on socket `i`; it is lost if that direction is stalled
    /// (or stalls now).
    fn send(&mut self, now: Timestamp, i: usize, dir: Dir, item: Item) {
        let stalls_now = matches!(item, Item::Text(_))
            && self
                .loss
                .as_mut()
                .is_some_and(|l| l.rng.below(1000) < l.per_mille);
        let socket = &mut self.sockets[i];
        let (stalled, queue) = match dir {
            Dir::Up => (&mut socket.up_stalled, &mut socket.up),
            Dir::Down => (&mut socket.down_stalled, &mut socket.down),
        };
        *stalled |= stalls_now;
        let lost = *stalled;
        if let Item::Text(text) = &item {
            self.wire.push(Wire {
                at: now,
                socket: i,
                dir,
                text: text.clone(),
                lost,
            });
        }
        if !lost {
            queue.push_back(item);
        }
    }
}

// ----- the pair -----

#[derive(Debug)]
struct Pair {
    now: Timestamp,
    client: ClientState,
    server: Server,
    link: Link,
    /// The socket the client is on.
    current: Option<usize>,
    alice: User,
    room: RoomId,
    bob_peer: PeerId,
    bob_inbox: Vec<OutgoingFrame>,
    bob_next_ping: Timestamp,
    bob_requests: u64,
    /// Bob says one of these right after each history page the server
    /// reads: live traffic in the middle of a catch-up.
    bob_between_pages: VecDeque<String>,
    /// What the app was told, and when.
    events: Vec<(Timestamp, Event)>,
    completions: Vec<Completion>,
    /// Each connection attempt: when, and whether a socket opened.
    attempts: Vec<(Timestamp, bool)>,
}

impl Pair {
    /// Alice's client (seeded with `seed`) and bob, both members of one
    /// room; bob is connected, alice's client not yet driven.
    fn new(seed: u64) -> Self {
        let now = at(0);
        let (alice, bob) = (user("alice"), user("bob"));
        let server = Server::new();
        let room = RoomId::new();
        let record = Room {
            id: room,
            name: "pair".into(),
            topic: None,
            visibility: Visibility::Private,
            created_by: alice.id,
            created_at: now,
            member_count: 0,
        };
        let member = |user: &User, role| Membership {
            room_id: room,
            user_id: user.id,
            role,
            joined_at: now,
        };
        ready(
            server
                .store
                .create_room(record, member(&alice, Role::Owner)),
        )
        .expect("room");
        ready(server.store.add_member(member(&bob, Role::Member))).expect("member");

        let config = ClientConfig {
            device_name: Some("laptop".into()),
            backoff: BACKOFF,
            handshake_timeout: HANDSHAKE,
            dead_after: DEAD_AFTER,
            ..ClientConfig::default()
        };
        let mut client = ClientState::new(config, now, seed);
        // What the native client does after joining a room: resume it from
        // its start.
        client.observe_seq(room, 0);

        let mut pair = Self {
            now,
            client,
            server,
            link: Link {
                up: true,
                sockets: Vec::new(),
                loss: None,
                wire: Vec::new(),
            },
            current: None,
            alice,
            room,
            bob_peer: PeerId::new(),
            bob_inbox: Vec::new(),
            bob_next_ping: now.saturating_add(HEARTBEAT),
            bob_requests: 0,
            bob_between_pages: VecDeque::new(),
            events: Vec::new(),
            completions: Vec::new(),
            attempts: Vec::new(),
        };
        pair.server.accept(pair.bob_peer, &bob);
        pair.bob_request(ClientRequest::Hello(Hello::default()));
        pair.route();
        assert!(
            matches!(
                pair.bob_inbox.first().map(|f| &f.event),
                Some(ServerEvent::Welcome { .. })
            ),
            "bob is welcomed: {:?}",
            pair.bob_inbox
        );
        pair
    }

    // ----- driving -----

    /// Runs the loop until nothing moves. The clock stands still.
    fn drive(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    /// One round: the client's writes, the server's reads, one history
    /// page, the server's writes, the client's reads. Whether anything
    /// happened.
    fn step(&mut self) -> bool {
        let mut progress = self.client_io();
        for i in 0..self.link.sockets.len() {
            let peer = self.link.sockets[i].peer;
            // The service reads a connection's next frame only once its
            // hello (history included) is done.
            while !self.server.catching_up(peer)
                && let Some(item) = self.link.sockets[i].up.pop_front()
            {
                progress = true;
                match item {
                    Item::Text(text) => self.server.handle_text(self.now, peer, &text),
                    Item::Close(_) => self.server.disconnect(self.now, peer),
                }
            }
        }
        if self.server.backfill_step(self.now) {
            progress = true;
            // What was stored before this page was read reaches the engine
            // now: late announcements lag exactly one page.
            self.server.announce_step(self.now);
            if let Some(text) = self.bob_between_pages.pop_front() {
                self.bob_say(&text);
            }
        } else {
            progress |= self.server.announce_step(self.now);
        }
        progress |= self.route();
        // One frame at a time, writing what each asks for before reading
        // the next, as the native driver does.
        while let Some(i) = self.current {
            let Some(item) = self.link.sockets[i].down.pop_front() else {
                break;
            };
            progress = true;
            match item {
                Item::Text(text) => self.client.frame_received(&text, self.now),
                Item::Close(reason) => self.client.disconnected(self.now, reason),
            }
            self.client_io();
        }
        while let Some(event) = self.client.poll_event() {
            self.events.push((self.now, event));
        }
        self.completions
            .extend(std::iter::from_fn(|| self.client.poll_completion()));
        progress
    }

    /// The driver's half of the client: write what it wants written, drop
    /// the socket once it is done with it, open one when it asks.
    fn client_io(&mut self) -> bool {
        let mut progress = false;
        if let Some(i) = self.current {
            while let Some(text) = self.client.poll_transmit() {
                self.link.send(self.now, i, Dir::Up, Item::Text(text));
                progress = true;
            }
            let moved_on = !matches!(
                self.client.status(),
                ConnectionStatus::Connecting | ConnectionStatus::Connected
            );
            if self.client.poll_close() || moved_on {
                self.current = None;
                let socket = &mut self.link.sockets[i];
                socket.client_open = false;
                socket.down.clear();
                let bye = Item::Close("closed by the client".into());
                self.link.send(self.now, i, Dir::Up, bye);
                progress = true;
            }
        }
        if self.current.is_none() && self.client.poll_connect(self.now) {
            self.open();
            self.client_io();
            progress = true;
        }
        progress
    }

    /// A connection attempt: a socket if the network is up.
    fn open(&mut self) {
        self.attempts.push((self.now, self.link.up));
        if !self.link.up {
            let refused =
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "the network is down");
            self.client
                .connect_failed(self.now, ClientError::transport(refused));
            return;
        }
        let peer = PeerId::new();
        self.server.accept(peer, &self.alice);
        self.link.sockets.push(Socket {
            peer,
            up: VecDeque::new(),
            down: VecDeque::new(),
            up_stalled: false,
            down_stalled: false,
            client_open: true,
        });
        self.current = Some(self.link.sockets.len() - 1);
        self.client.connected(self.now);
    }

    /// Hands the server's frames to bob or to the link.
    fn route(&mut self) -> bool {
        let mut any = false;
        while let Some((peer, item)) = self.server.out.pop_front() {
            any = true;
            if peer == self.bob_peer {
                match item {
                    Item::Text(text) => {
                        let frame = serde_json::from_str(&text).expect("server frames parse");
                        self.bob_inbox.push(frame);
                    }
                    Item::Close(why) => panic!("bob's perfect link was closed: {why}"),
                }
                continue;
            }
            // A socket the client dropped reads nothing more.
            let socket = self
                .link
                .sockets
                .iter()
                .position(|s| s.peer == peer && s.client_open);
            if let Some(i) = socket {
                self.link.send(self.now, i, Dir::Down, item);
            }
        }
        any
    }

    // ----- time -----

    /// The earliest deadline of either end (bob pings every heartbeat).
    fn next_deadline(&self) -> Timestamp {
        [
            self.client.poll_timeout(),
            self.server.engine.poll_timeout(),
            Some(self.bob_next_ping),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.bob_next_ping)
    }

    /// Jumps the clock to the next deadline and fires it; returns the time.
    fn advance_to_next_deadline(&mut self) -> Timestamp {
        self.now = self.now.max(self.next_deadline());
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        if self.bob_next_ping <= self.now {
            self.bob_next_ping = self.now.saturating_add(HEARTBEAT);
            self.bob_request(ClientRequest::Ping(Map::new()));
        }
        self.drive();
        self.now
    }

    /// Fires every deadline up to `t` in turn, then stops the clock at `t`.
    fn advance_to(&mut self, t: Timestamp) {
        let mut fired = 0;
        while self.next_deadline() <= t {
            fired += 1;
            assert!(fired < 100_000, "a deadline that never clears");
            self.advance_to_next_deadline();
        }
        self.now = self.now.max(t);
        self.drive();
    }

    fn advance(&mut self, d: Duration) {
        self.advance_to(self.now.saturating_add(d));
    }

    /// Jumps to the client's own next deadline (firing the server's and
    /// bob's on the way); returns it.
    fn advance_to_client_deadline(&mut self) -> Timestamp {
        let t = self
            .client
            .poll_timeout()
            .expect("the client has a deadline");
        self.advance_to(t);
        t
    }

    /// Advances deadline by deadline until `done`, for at most `limit`.
    fn advance_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) {
        let end = self.now.saturating_add(limit);
        while !done(self) {
            assert!(self.now <= end, "not done within {limit:?}");
            self.advance_to_next_deadline();
        }
    }

    // ----- the link -----

    /// The connection is cut (a cable pulled): both ends see the socket
    /// fail at once, and whatever was in flight is lost.
    fn drop_link(&mut self) {
        let i = self.current.take().expect("a socket to drop");
        let socket = &mut self.link.sockets[i];
        socket.client_open = false;
        socket.up.clear();
        socket.down.clear();
        let peer = socket.peer;
        self.client.disconnected(self.now, "the link dropped");
        self.server.disconnect(self.now, peer);
        self.drive();
    }

    /// From now on nothing gets through in `dir` on the current socket.
    fn stall(&mut self, dir: Dir) {
        let i = self.current.expect("a socket to stall");
        let socket = &mut self.link.sockets[i];
        match dir {
            Dir::Up => socket.up_stalled = true,
            Dir::Down => socket.down_stalled = true,
        }
    }

    // ----- bob -----

    /// Bob's frames skip the link but go through the server's parsing.
    fn bob_request(&mut self, request: ClientRequest) {
        self.bob_requests += 1;
        let text = wire_text(&request, format!("b{}", self.bob_requests));
        self.server.handle_text(self.now, self.bob_peer, &text);
    }

    fn bob_say(&mut self, content: &str) {
        self.bob_request(ClientRequest::MessageSend {
            room_id: self.room,
            content: content.into(),
            client_id: None,
        });
    }

    fn bob_send(&mut self, content: &str) {
        self.bob_say(content);
        self.drive();
    }

    /// The seqs bob received, in order.
    fn bob_seqs(&self) -> Vec<u64> {
        let seqs = self.bob_inbox.iter().filter_map(|f| match &f.event {
            ServerEvent::MessageCreated { message } => Some(message.seq),
            _ => None,
        });
        seqs.collect()
    }

    // ----- what happened -----

    /// The seqs of the room's messages the app was given, in order.
    fn app_seqs(&self) -> Vec<u64> {
        let seqs = self.events.iter().filter_map(|(_, e)| match e {
            Event::Message(m) if m.room_id == self.room => Some(m.seq),
            _ => None,
        });
        seqs.collect()
    }

    /// Each `Event::Disconnected`: when, its `retry_at`, its reason.
    fn disconnects(&self) -> Vec<(Timestamp, Timestamp, String)> {
        let lost = self.events.iter().filter_map(|(t, e)| match e {
            Event::Disconnected { reason, retry_at } => Some((*t, *retry_at, reason.clone())),
            _ => None,
        });
        lost.collect()
    }

    /// `resumed` of each `Event::Connected`.
    fn connects(&self) -> Vec<bool> {
        let up = self.events.iter().filter_map(|(_, e)| match e {
            Event::Connected { resumed, .. } => Some(*resumed),
            _ => None,
        });
        up.collect()
    }

    /// Errors the app was told of: none of these tests expects any.
    fn errors(&self) -> Vec<&Event> {
        let errors = self.events.iter().map(|(_, e)| e);
        errors
            .filter(|e| matches!(e, Event::ServerError(_) | Event::SendFailed { .. }))
            .collect()
    }

    /// The client's frames of type `kind`, lost ones included.
    fn written(&self, kind: &str) -> Vec<(&Wire, Value)> {
        let up = self.link.wire.iter().filter(|w| w.dir == Dir::Up);
        up.map(|w| (w, w.json()))
            .filter(|(_, v)| v["type"] == kind)
            .collect()
    }

    /// The payload of every `system.hello` the client wrote.
    fn hellos(&self) -> Vec<Value> {
        let hellos = self.written("system.hello").into_iter();
        hellos.map(|(_, v)| v["payload"].clone()).collect()
    }

    /// The `chat.message.send` frames written under `client_id`.
    fn sends_of(&self, client_id: &str) -> Vec<(&Wire, Value)> {
        let sends = self.written("chat.message.send").into_iter();
        sends
            .filter(|(_, v)| v["payload"]["client_id"] == client_id)
            .collect()
    }

    /// The seqs of the `chat.message.created` frames that reached the
    /// client on socket `i`, in order.
    fn seqs_received_on(&self, i: usize) -> Vec<u64> {
        let down = self.link.wire.iter();
        down.filter(|w| w.socket == i && w.dir == Dir::Down && !w.lost)
            .map(Wire::json)
            .filter(|v| v["type"] == "chat.message.created")
            .filter_map(|v| v["payload"]["message"]["seq"].as_u64())
            .collect()
    }

    /// Every message the store holds for the room.
    fn stored(&self) -> Vec<Message> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |m: &Message| m.seq);
            let query = HistoryPage::After(after);
            let page = ready(self.server.store.messages(self.room, query, MAX_PAGE));
            let page = page.expect("history");
            all.extend(page.messages);
            if !page.has_more {
                return all;
            }
        }
    }

    /// How each completion of the send `client_id` came out: the seq, or
    /// the error's code.
    fn send_results(&self, client_id: &str) -> Vec<Result<u64, &'static str>> {
        let results = self.completions.iter().filter_map(|c| match c {
            Completion::Send {
                client_id: id,
                result,
            } if id == client_id => Some(result.as_ref().map(|m| m.seq).map_err(|e| e.code_str())),
            _ => None,
        });
        results.collect()
    }
}

/// Whether `delay` is one the SDK's backoff may pick after `failures`
/// failures in a row: in `[ceiling / 2, ceiling]`, the ceiling doubling
/// from `initial` up to `max`.
fn backoff_bounds(failures: u32) -> (Duration, Duration) {
    let mut model = Backoff::new(BACKOFF);
    let mut jitter = Rng::new(0);
    for _ in 0..failures {
        // Only the count matters to the ceiling, not the jitter drawn.
        model.next_delay(&mut jitter);
    }
    let ceiling = model.ceiling();
    (ceiling / 2, ceiling)
}

#[test]
fn the_client_backs_off_reconnects_and_says_hello_again() {
    let mut p = Pair::new(7);
    p.drive();
    assert_eq!(p.client.status(), ConnectionStatus::Connected);
    assert_eq!(
        p.hellos(),
        vec![json!({"device_name": "laptop", "since": {p.room.to_string(): 0}})]
    );
    p.bob_send("one");
    p.bob_send("two");
    assert_eq!(p.app_seqs(), [1, 2]);
    let (first_peer, _) = p.client.me().expect("welcomed");

    // The cable is pulled and the network stays down for three attempts.
    p.link.up = false;
    p.drop_link();
    assert!(
        p.server.engine.peer(first_peer).is_none(),
        "the server saw the socket end"
    );
    for attempt in 0..4 {
        let ConnectionStatus::Disconnected { retry_at } = p.client.status() else {
            panic!("attempt {attempt}: not waiting: {:?}", p.client.status())
        };
        if attempt == 3 {
            p.link.up = true;
        }
        let tried = p.attempts.len();
        // The clock jumps to the client's deadline (through bob's pings and
        // the server's timers on the way), and the attempt is made then.
        assert_eq!(p.advance_to_client_deadline(), retry_at);
        assert_eq!(
            p.attempts[tried..],
            [(retry_at, attempt == 3)],
            "one attempt, at its time"
        );
    }

    // Each delay was the SDK's: within its bounds for that many failures.
    let disconnects = p.disconnects();
    assert_eq!(disconnects.len(), 4, "{disconnects:?}");
    for (n, (lost_at, retry_at, reason)) in disconnects.iter().enumerate() {
        let delay = retry_at.since(*lost_at);
        let (low, high) = backoff_bounds(n as u32);
        assert!(
            low <= delay && delay <= high,
            "failure {n} ({reason}): {delay:?} not in [{low:?}, {high:?}]"
        );
        let cause = if n == 0 {
            "the link dropped"
        } else {
            "the network is down"
        };
        assert!(reason.contains(cause), "failure {n}: {reason}");
    }
    assert_eq!(
        backoff_bounds(3).1,
        Duration::from_millis(1_600),
        "the ceilings doubled"
    );

    // Connected again: one new hello (failed attempts write nothing) with
    // the cursor, a welcome, a new peer the server knows.
    assert_eq!(p.client.status(), ConnectionStatus::Connected);
    let hellos = p.hellos();
    assert_eq!(hellos.len(), 2);
    assert_eq!(hellos[1]["since"], json!({p.room.to_string(): 2}));
    assert_eq!(p.connects(), [false, true]);
    let (second_peer, _) = p.client.me().expect("welcomed");
    assert_ne!(second_peer, first_peer);
    assert!(p.server.engine.peer(second_peer).is_some());
    assert_eq!(p.app_seqs(), [1, 2], "nothing new, nothing twice");
    p.bob_send("three");
    assert_eq!(p.app_seqs(), [1, 2, 3], "live again");

    // The welcome reset the backoff: the next loss waits the first delay.
    p.drop_link();
    let (lost_at, retry_at, _) = p.disconnects().pop().expect("a disconnect");
    assert!(retry_at.since(lost_at) <= BACKOFF.initial);
    assert!(p.errors().is_empty(), "{:?}", p.errors());
}

#[test]
fn messages_missed_offline_are_resumed_with_since_without_gap_or_duplicate() {
    let mut p = Pair::new(11);
    p.drive();
    for text in ["1", "2", "3"] {
        p.bob_send(text);
    }
    assert_eq!(p.app_seqs(), [1, 2, 3]);

    // Offline while bob goes on.
    p.drop_link();
    for text in ["4", "5", "6", "7"] {
        p.bob_send(text);
    }
    assert_eq!(p.app_seqs(), [1, 2, 3], "nothing reaches an offline client");
    assert_eq!(p.client.cursors(), HashMap::from([(p.room, 3)]));

    // Back, and bob keeps talking while the missed history is paged in.
    p.bob_between_pages.extend(["8".to_owned(), "9".to_owned()]);
    p.advance_to_client_deadline();
    assert_eq!(p.connects(), [false, true]);
    assert_eq!(p.hellos()[1]["since"], json!({p.room.to_string(): 3}));
    assert!(p.bob_between_pages.is_empty(), "bob spoke mid catch-up");
    assert_eq!(p.app_seqs(), (1..=9).collect::<Vec<_>>());
    // Not even the wire carried a duplicate: the engine held 8 and 9 while
    // the pages were read, and dropped them once a page had them.
    let socket = p.current.expect("connected");
    assert_eq!(p.seqs_received_on(socket), (4..=9).collect::<Vec<_>>());

    // Again, but now a message is stored before the last page is read and
    // reaches the engine only after it (the service's append task and the
    // connection's history reads race). The engine sends it twice; the
    // client's dedupe by (room, seq) keeps the app exact.
    p.drop_link();
    for text in ["10", "11", "12"] {
        p.bob_send(text);
    }
    p.server.announce_late = true;
    p.bob_between_pages.push_back("13".to_owned());
    p.advance_to_client_deadline();
    assert_eq!(p.hellos()[2]["since"], json!({p.room.to_string(): 9}));
    let socket = p.current.expect("connected");
    assert_eq!(p.seqs_received_on(socket), [10, 11, 12, 13, 13]);
    assert_eq!(p.app_seqs(), (1..=13).collect::<Vec<_>>());
    assert_eq!(p.bob_seqs(), (1..=13).collect::<Vec<_>>());
    assert!(p.errors().is_empty(), "{:?}", p.errors());
}

#[test]
fn sends_queued_offline_or_unanswered_are_delivered_exactly_once() {
    let mut p = Pair::new(23);
    p.drive();
    p.bob_send("hi");
    assert_eq!(p.app_seqs(), [1]);

    // Offline: the app's sends wait in the client's queue.
    p.link.up = false;
    p.drop_link();
    let queued: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|text| p.client.send_message(p.room, *text, p.now))
        .collect();
    p.drive();
    assert_eq!(p.client.queued().collect::<Vec<_>>(), queued);
    assert!(p.written("chat.message.send").is_empty(), "nothing written");
    assert!(p.completions.is_empty());
    for text in ["x", "y", "z"] {
        p.bob_send(text);
    }

    // A failed attempt keeps the queue; the next one flushes it right after
    // the welcome. The server reads the sends once the missed history
    // (2..=4) is paged in, so they are 5..=7.
    p.advance_to_client_deadline();
    assert_eq!(
        p.client.queued().count(),
        3,
        "kept through a failed attempt"
    );
    p.link.up = true;
    p.advance_to_client_deadline();
    assert_eq!(p.client.status(), ConnectionStatus::Connected);
    for (id, seq) in queued.iter().zip(5..) {
        assert_eq!(p.sends_of(id).len(), 1, "{id}: written once");
        assert_eq!(p.send_results(id), [Ok(seq)], "{id}: completed once");
    }
    assert_eq!(p.client.queued().count(), 0);
    assert_eq!(p.app_seqs(), (1..=7).collect::<Vec<_>>());
    assert_eq!(p.bob_seqs(), (1..=7).collect::<Vec<_>>());

    // The server stores "d" but its answer is lost: from now on nothing
    // gets through to the client. Its pings go unanswered; after
    // DEAD_AFTER heartbeats it gives the connection up and reconnects.
    p.stall(Dir::Down);
    let d = p.client.send_message(p.room, "d", p.now);
    p.drive();
    assert_eq!(p.stored().len(), 8, "stored at once");
    let silent_since = p.now;
    p.advance_until(Duration::from_secs(10), |p| {
        matches!(p.client.status(), ConnectionStatus::Disconnected { .. })
    });
    let (lost_at, _, reason) = p.disconnects().pop().expect("a disconnect");
    assert_eq!(reason, "the server went silent");
    assert_eq!(lost_at, silent_since.saturating_add(HEARTBEAT * DEAD_AFTER));
    p.advance_to_client_deadline();
    assert_eq!(p.connects(), [false, true, true]);

    // Re-sent under the same client_id; the store answered it with the
    // message it already had. One message, one completion, one event.
    let sends = p.sends_of(&d);
    assert_eq!(sends.len(), 2, "the original and one retry");
    assert_ne!(sends[0].1["id"], sends[1].1["id"], "a new request id");
    assert_ne!(sends[0].0.socket, sends[1].0.socket);
    let stored = p.stored();
    let copies = stored.iter().filter(|m| m.client_id.as_ref() == Some(&d));
    assert_eq!(copies.map(|m| m.seq).collect::<Vec<_>>(), [8]);
    assert_eq!(stored.len(), 8);
    assert_eq!(p.server.duplicates, 1, "the retry met the stored copy");
    assert_eq!(p.send_results(&d), [Ok(8)]);
    assert_eq!(p.app_seqs(), (1..=8).collect::<Vec<_>>());
    assert_eq!(p.bob_seqs(), (1..=8).collect::<Vec<_>>());
    assert!(p.errors().is_empty(), "{:?}", p.errors());
}

#[test]
fn a_dead_uplink_is_closed_by_the_servers_heartbeat_and_recovered() {
    let mut p = Pair::new(31);
    p.drive();
    p.advance(Duration::from_millis(2_300));
    p.bob_send("before");
    let old = p.current.expect("connected");
    let (old_peer, _) = p.client.me().expect("welcomed");

    // The client's frames stop reaching the server; the server's still
    // reach the client, so only the server can notice.
    p.stall(Dir::Up);
    let lost = p.client.send_message(p.room, "into the void", p.now);
    p.drive();
    p.advance(Duration::from_millis(1_500));
    p.bob_send("during");
    assert_eq!(p.app_seqs(), [1, 2], "bob still gets through");
    p.advance_until(Duration::from_secs(10), |p| {
        matches!(p.client.status(), ConnectionStatus::Disconnected { .. })
    });

    // Closed by the server exactly SERVER_TIMEOUT after the last frame of
    // the client's it read.
    let last_read = p
        .link
        .wire
        .iter()
        .filter(|w| w.socket == old && w.dir == Dir::Up);
    let last_read = last_read.filter(|w| !w.lost).map(|w| w.at).max();
    let last_read = last_read.expect("the hello got through");
    assert_eq!(
        p.server.closed,
        [(old_peer, "heartbeat timeout".to_owned())]
    );
    let (lost_at, _, reason) = p.disconnects().pop().expect("a disconnect");
    assert_eq!(lost_at, last_read.saturating_add(SERVER_TIMEOUT));
    assert_eq!(reason, "closed by the server (1008): heartbeat timeout");

    // Reconnected: the send the link swallowed goes out again and is
    // stored once.
    p.advance_to_client_deadline();
    assert_eq!(p.connects(), [false, true]);
    let sends = p.sends_of(&lost);
    let fates: Vec<bool> = sends.iter().map(|(w, _)| w.lost).collect();
    assert_eq!(fates, [true, false], "lost once, then delivered");
    assert_eq!(p.send_results(&lost), [Ok(3)]);
    let stored: Vec<(u64, String)> = p.stored().into_iter().map(|m| (m.seq, m.content)).collect();
    let contents = ["before", "during", "into the void"].map(String::from);
    assert_eq!(stored, (1..).zip(contents).collect::<Vec<_>>());
    assert_eq!(p.app_seqs(), [1, 2, 3]);
    assert!(p.errors().is_empty(), "{:?}", p.errors());
}

/// A minute of chat over a link where any frame may stall its direction
/// (3% each), for several seeds: every message arrives once, in order, and
/// every send completes once, however often the connection dies.
#[test]
fn random_stalls_lose_nothing_and_duplicate_nothing() {
    let mut reconnects = Vec::new();
    for seed in 1..=4u64 {
        let mut p = Pair::new(seed);
        p.link.loss = Some(Loss {
            rng: Rng::new(seed ^ 0x5eed),
            per_mille: 30,
        });
        p.drive();
        let tick = Duration::from_millis(100);
        let mut mine = Vec::new();
        let mut bobs = 0;
        for n in 1..=600u32 {
            p.advance(tick);
            if n % 7 == 0 {
                p.bob_send(&format!("bob {n}"));
                bobs += 1;
            }
            if n % 11 == 0 {
                mine.push(p.client.send_message(p.room, format!("alice {n}"), p.now));
                p.drive();
            }
        }
        // The network heals; the client finds its way back.
        p.link.loss = None;
        p.advance_until(Duration::from_secs(30), |p| {
            p.client.status() == ConnectionStatus::Connected && p.client.queued().count() == 0
        });
        p.advance(Duration::from_secs(1));

        let total = bobs + mine.len() as u64;
        let everything: Vec<u64> = (1..=total).collect();
        let stored = p.stored();
        assert_eq!(stored.len() as u64, total, "seed {seed}: stored once each");
        for id in &mine {
            let copies = stored.iter().filter(|m| m.client_id.as_ref() == Some(id));
            assert_eq!(copies.count(), 1, "seed {seed}: {id} stored once");
            let result = p.send_results(id);
            assert!(
                matches!(result[..], [Ok(_)]),
                "seed {seed}: {id} completed once: {result:?}"
            );
        }
        assert_eq!(p.app_seqs(), everything, "seed {seed}: the app's view");
        assert_eq!(p.bob_seqs(), everything, "seed {seed}: bob's view");
        assert!(p.errors().is_empty(), "seed {seed}: {:?}", p.errors());
        // Every loss was noticed by a heartbeat (or a stuck handshake).
        for (_, _, reason) in p.disconnects() {
            assert!(
                [
                    "the server went silent",
                    "closed by the server (1008): heartbeat timeout",
                    "handshake timed out",
                ]
                .contains(&reason.as_str()),
                "seed {seed}: {reason}"
            );
        }
        reconnects.push((p.connects().len() - 1, p.server.duplicates));
    }
    // The loss did bite: each run lost its connection several times, and
    // some retries met a copy the store already had (a lost answer).
    assert!(
        reconnects.iter().all(|&(n, dups)| n >= 5 && dups >= 1),
        "(reconnects, duplicate sends) per seed: {reconnects:?}"
    );
}
