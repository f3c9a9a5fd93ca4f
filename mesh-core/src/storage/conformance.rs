//! The conformance suite: what every [`Store`] backend must do.
//!
//! One macro call, [`store_conformance_tests!`](crate::store_conformance_tests),
//! turns this module into a set of tests for a backend, as matrix-rust-sdk's
//! `statestore_integration_tests!` does:
//!
//! ```ignore
//! use mesh_core::storage::memory::MemoryStore;
//! use mesh_core::storage::sled::SledStore;
//!
//! // A backend without persistence: an expression giving a future of a
//! // fresh, empty store (evaluated once per test).
//! mesh_core::store_conformance_tests!(memory, async { MemoryStore::new() });
//!
//! // A persistent backend: a closure opening the store in a directory
//! // (a `PathBuf`). The suite gives every test its own temporary directory,
//! // and adds tests that drop the store and reopen it there ("restart").
//! mesh_core::store_conformance_tests!(sled, restart = |path: std::path::PathBuf| async move {
//!     SledStore::open(path.join("db")).expect("open sled")
//! });
//!
//! // A backend on a service the machine may lack: `when` is checked at the
//! // start of every test, which returns at once when it is false.
//! mesh_core::store_conformance_tests!(pg, restart = |path| open_pg(path), when = pg_ready());
//! ```
//!
//! Each call expands to a module (`memory`, `sled` above) of tests:
//! one `#[tokio::test]` per behaviour (users, devices, rooms, memberships,
//! appends and idempotency, pagination, the cascade of `delete_room`,
//! sessions, the erased [`DynStore`](super::DynStore)), one concurrency test
//! (many tasks appending to one room on a multi-threaded runtime: `seq` must
//! stay gap-free), and a model-based property test ([`model_test`]) that runs
//! random operations against the store and a `BTreeMap` model, with restarts
//! in the mix for persistent stores (spacejam/sled `tests/tree` style).
//!
//! The calling crate needs, in its `[dev-dependencies]`: `tokio` with the
//! `macros` and `rt-multi-thread` features, and `mesh-core` with the
//! `conformance` feature (which brings `proptest` in through mesh-core; the
//! calling crate does not need it). Inside the generated module the
//! expression is resolved with `use super::*`, so import the store type next
//! to the macro call.
//!
//! The functions here are public so the macro can call them; a backend's own
//! tests may call them directly too.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::{
    AppendOutcome, DeviceRecord, HistoryPage, IntoDynStore, MAX_PAGE, Membership, NewMessage,
    RoomUpdate, Store, UserRecord,
};
use crate::protocol::{
    DeviceId, Message, MessageId, P2pSession, PeerId, Role, Room, RoomId, SessionId, SessionKind,
    SessionState, Timestamp, User, UserId, Visibility,
};

/// Generates the conformance tests for a backend. See the
/// [module docs](crate::storage::conformance) for the two forms.
#[macro_export]
macro_rules! store_conformance_tests {
    ($name:ident, restart = $open:expr $(,)?) => {
        $crate::store_conformance_tests!($name, restart = $open, when = true);
    };
    ($name:ident, restart = $open:expr, when = $ready:expr $(,)?) => {
        $crate::store_conformance_tests!(@suite $name,
            {
                let dir = $crate::storage::conformance::TempDir::new();
                let store = ($open)(dir.path().to_path_buf()).await;
                (dir, store)
            },
            persistent = true,
            open = |path: ::std::path::PathBuf| ($open)(path),
            guard = { if !$ready { return; } },
            extra = {
                #[::tokio::test]
                async fn everything_survives_a_restart() {
                    if !$ready { return; }
                    let dir = $crate::storage::conformance::TempDir::new();
                    let store = ($open)(dir.path().to_path_buf()).await;
                    let written = $crate::storage::conformance::populate(&store).await;
                    drop(store);
                    let store = ($open)(dir.path().to_path_buf()).await;
                    $crate::storage::conformance::verify_populated(&store, &written).await;
                    drop(store);
                    drop(dir);
                }
            }
        );
    };
    ($name:ident, $make:expr $(,)?) => {
        $crate::store_conformance_tests!(@suite $name,
            {
                ($crate::storage::conformance::TempDir::none(), $make.await)
            },
            persistent = false,
            open = |_path: ::std::path::PathBuf| $make,
            guard = {},
            extra = {}
        );
    };
    (@suite $name:ident, $make:block, persistent = $persistent:expr, open = $open:expr,
        guard = $guard:block, extra = { $($extra:tt)* }) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn make() -> ($crate::storage::conformance::TempDir, impl $crate::storage::Store) {
                $make
            }

            $crate::store_conformance_tests!(@tests guard = $guard,
                users, devices, rooms, memberships, append_and_idempotency, pagination,
                delete_room_cascades, sessions, erased
            );

            $($extra)*

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_appends_have_no_gaps() {
                $guard
                use $crate::storage::conformance as c;
                let (dir, store) = make().await;
                let store = ::std::sync::Arc::new(store);
                let room = c::concurrent_setup(&*store).await;
                let mut tasks = ::std::vec::Vec::new();
                for task in 0..c::CONCURRENT_TASKS {
                    let store = ::std::sync::Arc::clone(&store);
                    tasks.push(::tokio::spawn(async move {
                        c::concurrent_task(&*store, room, task).await
                    }));
                }
                for task in tasks {
                    task.await.expect("an appending task panicked");
                }
                c::concurrent_check(&*store, room).await;
                drop(store);
                drop(dir);
            }

            #[test]
            fn model_based() {
                $guard
                let rt = ::tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                $crate::storage::conformance::model_test($open, $persistent, &|f| rt.block_on(f));
            }
        }
    };
    (@tests guard = $guard:block, $($test:ident),*) => {
        $(
            #[::tokio::test]
            async fn $test() {
                $guard
                let (dir, store) = make().await;
                $crate::storage::conformance::$test(store).await;
                drop(dir);
            }
        )*
    };
}

// ---- fixtures ----

/// A temporary directory, removed on drop; `none()` for stores without one.
/// (Kept here so callers of the macro need no `tempfile`.)
#[derive(Debug)]
pub struct TempDir(Option<PathBuf>);

impl TempDir {
    /// Creates a fresh, empty directory under the system's temp dir.
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("mesh-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(Some(path))
    }

    /// No directory.
    pub fn none() -> Self {
        Self(None)
    }

    /// The directory (the temp dir itself for [`TempDir::none`]).
    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or_else(|| Path::new("."))
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

/// A user record named `name`, with a fresh id.
pub fn user(name: &str) -> UserRecord {
    UserRecord {
        user: User {
            id: UserId::new(),
            username: name.to_owned(),
            display_name: name.to_uppercase(),
            created_at: ts(1),
        },
        password_hash: "$argon2id$fake".to_owned(),
    }
}

/// A room made by `owner` at `at` (ms), with its owner membership. The
/// `member_count` given is deliberately wrong: stores must ignore it.
pub fn room(owner: UserId, at: i64, visibility: Visibility) -> (Room, Membership) {
    let room = Room {
        id: RoomId::new(),
        name: format!("room-{at}"),
        topic: None,
        visibility,
        created_by: owner,
        created_at: ts(at),
        member_count: 42,
    };
    let owner = Membership {
        room_id: room.id,
        user_id: owner,
        role: Role::Owner,
        joined_at: ts(at),
    };
    (room, owner)
}

fn membership(room: RoomId, user: UserId, at: i64) -> Membership {
    Membership {
        room_id: room,
        user_id: user,
        role: Role::Member,
        joined_at: ts(at),
    }
}

/// A message to append, with a fresh id.
pub fn new_message(
    room: RoomId,
    sender: &User,
    content: &str,
    client_id: Option<&str>,
) -> NewMessage {
    NewMessage {
        id: MessageId::new(),
        room_id: room,
        sender: sender.clone(),
        content: content.to_owned(),
        created_at: ts(100),
        client_id: client_id.map(str::to_owned),
    }
}

fn session(room: RoomId, from: UserId, to: UserId, at: i64) -> P2pSession {
    P2pSession {
        id: SessionId::new(),
        room_id: room,
        kind: SessionKind::File,
        initiator_peer_id: PeerId::new(),
        target_peer_id: PeerId::new(),
        initiator_user_id: from,
        target_user_id: to,
        state: SessionState::Pending,
        created_at: ts(at),
        expires_at: ts(at + 60_000),
    }
}

fn ids<T, I: Ord + Copy>(items: &[T], id: impl Fn(&T) -> I) -> Vec<I> {
    items.iter().map(id).collect()
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

async fn create_room<S: Store>(s: &S, room: &Room, owner: &Membership) {
    s.create_room(room.clone(), owner.clone())
        .await
        .expect("create_room");
}

async fn append<S: Store>(s: &S, m: NewMessage) -> AppendOutcome {
    s.append_message(m).await.expect("append_message")
}

// ---- behaviours ----

/// `create_user`, `user`, `user_by_name`; taken names and ids.
pub async fn users<S: Store>(s: S) {
    let alice = user("alice");
    assert!(s.create_user(alice.clone()).await.expect("create"));
    assert_eq!(
        s.user(alice.user.id).await.expect("user"),
        Some(alice.clone())
    );
    assert_eq!(
        s.user_by_name("alice").await.expect("by name"),
        Some(alice.clone())
    );

    // Same username, new id: refused, nothing written.
    let mut twin = user("alice");
    twin.user.display_name = "Impostor".into();
    assert!(!s.create_user(twin.clone()).await.expect("create"));
    assert_eq!(s.user(twin.user.id).await.expect("user"), None);
    assert_eq!(
        s.user_by_name("alice").await.expect("by name"),
        Some(alice.clone())
    );

    // Same id, new username: refused, nothing written.
    let mut same_id = user("alicia");
    same_id.user.id = alice.user.id;
    assert!(!s.create_user(same_id).await.expect("create"));
    assert_eq!(s.user_by_name("alicia").await.expect("by name"), None);
    assert_eq!(s.user(alice.user.id).await.expect("user"), Some(alice));

    assert_eq!(s.user(UserId::new()).await.expect("user"), None);
    assert_eq!(s.user_by_name("nobody").await.expect("by name"), None);
    let bob = user("bob");
    assert!(s.create_user(bob.clone()).await.expect("create"));
    assert_eq!(s.user_by_name("bob").await.expect("by name"), Some(bob));
}

/// `put_device` (insert and replace), `device`, `devices_of` order.
pub async fn devices<S: Store>(s: S) {
    let alice = UserId::new();
    let bob = UserId::new();
    let device = |user, at| DeviceRecord {
        id: DeviceId::new(),
        user_id: user,
        name: format!("device-{at}"),
        created_at: ts(at),
        revoked: false,
    };
    let d1 = device(alice, 20);
    let d2 = device(alice, 10);
    let d3 = device(bob, 5);
    for d in [&d1, &d2, &d3] {
        s.put_device(d.clone()).await.expect("put");
    }
    assert_eq!(s.device(d1.id).await.expect("device"), Some(d1.clone()));
    assert_eq!(
        s.devices_of(alice).await.expect("devices_of"),
        vec![d2.clone(), d1.clone()],
        "oldest first"
    );
    let revoked = DeviceRecord {
        revoked: true,
        ..d1.clone()
    };
    s.put_device(revoked.clone()).await.expect("revoke");
    assert_eq!(
        s.device(d1.id).await.expect("device"),
        Some(revoked.clone())
    );
    assert_eq!(
        s.devices_of(alice).await.expect("devices_of"),
        vec![d2.clone(), revoked]
    );
    assert_eq!(s.devices_of(bob).await.expect("devices_of"), vec![d3]);
    assert!(
        s.devices_of(UserId::new())
            .await
            .expect("devices_of")
            .is_empty()
    );
    assert_eq!(s.device(DeviceId::new()).await.expect("device"), None);
}

/// `create_room`, `room` (member_count), `update_room`, `public_rooms`,
/// `rooms_of` and their order.
pub async fn rooms<S: Store>(s: S) {
    let alice = UserId::new();
    let (r1, o1) = room(alice, 10, Visibility::Public);
    let (r2, o2) = room(alice, 5, Visibility::Private);
    let (r3, o3) = room(alice, 5, Visibility::Public);
    let (r4, o4) = room(UserId::new(), 5, Visibility::Public);
    for (r, o) in [(&r1, &o1), (&r2, &o2), (&r3, &o3), (&r4, &o4)] {
        create_room(&s, r, o).await;
    }
    let got = s.room(r1.id).await.expect("room").expect("r1 exists");
    assert_eq!(got.member_count, 1, "the store counts members");
    assert_eq!(
        got,
        Room {
            member_count: 1,
            ..r1.clone()
        }
    );
    assert_eq!(s.room(RoomId::new()).await.expect("room"), None);
    assert_eq!(s.member(r1.id, alice).await.expect("member"), Some(o1));

    // Oldest first, ties by id.
    let mut at5 = vec![r3.id, r4.id];
    at5.sort();
    let public = s.public_rooms().await.expect("public");
    assert_eq!(ids(&public, |r| r.id), [at5.clone(), vec![r1.id]].concat());
    assert!(public.iter().all(|r| r.member_count == 1));
    let mut mine = vec![r2.id, r3.id];
    mine.sort();
    mine.push(r1.id);
    assert_eq!(
        ids(&s.rooms_of(alice).await.expect("rooms_of"), |r| r.id),
        mine
    );
    let mut mine_ids = s.room_ids_of(alice).await.expect("room_ids_of");
    mine_ids.sort();
    let mut want = mine.clone();
    want.sort();
    assert_eq!(mine_ids, want);
    assert!(
        s.room_ids_of(UserId::new())
            .await
            .expect("room_ids_of")
            .is_empty()
    );
    assert!(
        s.rooms_of(UserId::new())
            .await
            .expect("rooms_of")
            .is_empty()
    );

    // Updates: only the given fields change.
    let renamed = s
        .update_room(
            r1.id,
            RoomUpdate {
                name: Some("renamed".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(
        renamed,
        Room {
            name: "renamed".into(),
            member_count: 1,
            ..r1.clone()
        }
    );
    let topical = s
        .update_room(
            r1.id,
            RoomUpdate {
                topic: Some(Some("hi".into())),
                ..Default::default()
            },
        )
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(topical.topic.as_deref(), Some("hi"));
    assert_eq!(topical.name, "renamed");
    let private = s
        .update_room(
            r1.id,
            RoomUpdate {
                topic: Some(None),
                visibility: Some(Visibility::Private),
                name: None,
            },
        )
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(private.topic, None);
    assert_eq!(private.visibility, Visibility::Private);
    assert_eq!(s.room(r1.id).await.expect("room"), Some(private));
    assert_eq!(ids(&s.public_rooms().await.expect("public"), |r| r.id), at5);
    let public_again = s
        .update_room(
            r2.id,
            RoomUpdate {
                visibility: Some(Visibility::Public),
                ..Default::default()
            },
        )
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(public_again.visibility, Visibility::Public);
    let mut expect = vec![r2.id, r3.id, r4.id];
    expect.sort();
    assert_eq!(
        ids(&s.public_rooms().await.expect("public"), |r| r.id),
        expect
    );
    // No-op update of an existing room, update of a missing one.
    assert!(
        s.update_room(r3.id, RoomUpdate::default())
            .await
            .expect("update")
            .is_some()
    );
    assert_eq!(
        s.update_room(
            RoomId::new(),
            RoomUpdate {
                name: Some("x".into()),
                ..Default::default()
            }
        )
        .await
        .expect("update"),
        None
    );
}

/// `add_member`, `remove_member`, `set_role`, `member`, `members` order and
/// the member count.
pub async fn memberships<S: Store>(s: S) {
    let (alice, bob, carol, dave) = (UserId::new(), UserId::new(), UserId::new(), UserId::new());
    let (r, owner) = room(alice, 1, Visibility::Public);
    create_room(&s, &r, &owner).await;
    let bob_m = membership(r.id, bob, 20);
    assert!(s.add_member(bob_m.clone()).await.expect("add"));
    // Already a member: refused, and nothing changes.
    assert!(
        !s.add_member(Membership {
            role: Role::Admin,
            ..bob_m.clone()
        })
        .await
        .expect("add")
    );
    assert_eq!(
        s.member(r.id, bob).await.expect("member"),
        Some(bob_m.clone())
    );
    assert!(
        s.add_member(membership(r.id, carol, 15))
            .await
            .expect("add")
    );
    assert!(s.add_member(membership(r.id, dave, 20)).await.expect("add"));
    assert_eq!(
        s.room(r.id)
            .await
            .expect("room")
            .expect("room")
            .member_count,
        4
    );

    let mut at20 = vec![bob, dave];
    at20.sort();
    let order = [vec![alice, carol], at20].concat();
    assert_eq!(
        ids(&s.members(r.id).await.expect("members"), |m| m.user_id),
        order
    );

    assert!(s.set_role(r.id, bob, Role::Admin).await.expect("set_role"));
    assert_eq!(
        s.member(r.id, bob).await.expect("member"),
        Some(Membership {
            role: Role::Admin,
            ..bob_m
        })
    );
    assert!(
        !s.set_role(r.id, UserId::new(), Role::Admin)
            .await
            .expect("set_role")
    );
    assert!(
        !s.set_role(RoomId::new(), bob, Role::Admin)
            .await
            .expect("set_role")
    );

    assert!(s.remove_member(r.id, bob).await.expect("remove"));
    assert!(!s.remove_member(r.id, bob).await.expect("remove"));
    assert!(!s.remove_member(RoomId::new(), carol).await.expect("remove"));
    assert_eq!(s.member(r.id, bob).await.expect("member"), None);
    assert_eq!(
        s.room(r.id)
            .await
            .expect("room")
            .expect("room")
            .member_count,
        3
    );
    assert!(s.rooms_of(bob).await.expect("rooms_of").is_empty());
    assert_eq!(
        ids(&s.rooms_of(carol).await.expect("rooms_of"), |r| r.id),
        vec![r.id]
    );
    assert!(s.members(RoomId::new()).await.expect("members").is_empty());
    // Rejoining is allowed.
    assert!(s.add_member(membership(r.id, bob, 30)).await.expect("add"));
    assert_eq!(
        s.room(r.id)
            .await
            .expect("room")
            .expect("room")
            .member_count,
        4
    );
}

/// `append_message` seq assignment, `last_seq`, and idempotency by
/// `(sender, room, client_id)`.
pub async fn append_and_idempotency<S: Store>(s: S) {
    let alice = user("alice").user;
    let bob = user("bob").user;
    let (r, owner) = room(alice.id, 1, Visibility::Public);
    let (other, other_owner) = room(alice.id, 2, Visibility::Public);
    create_room(&s, &r, &owner).await;
    create_room(&s, &other, &other_owner).await;
    assert_eq!(s.last_seq(r.id).await.expect("last_seq"), 0);
    assert_eq!(s.last_seq(RoomId::new()).await.expect("last_seq"), 0);

    let first = new_message(r.id, &alice, "hello", None);
    let AppendOutcome::Created(m1) = append(&s, first.clone()).await else {
        panic!("the first append must create");
    };
    assert_eq!(
        m1,
        Message {
            id: first.id,
            room_id: r.id,
            seq: 1,
            sender: alice.clone(),
            content: "hello".into(),
            created_at: first.created_at,
            client_id: None,
        }
    );
    let keyed = append(&s, new_message(r.id, &alice, "keyed", Some("k1"))).await;
    let AppendOutcome::Created(m2) = keyed else {
        panic!("a new client_id must create");
    };
    assert_eq!(m2.seq, 2);
    assert_eq!(m2.client_id.as_deref(), Some("k1"));

    // A retry: same sender, room and client_id, even with other content.
    let retry = append(&s, new_message(r.id, &alice, "different", Some("k1"))).await;
    assert_eq!(retry, AppendOutcome::Duplicate(m2.clone()));
    assert_eq!(retry.message(), &m2);
    assert_eq!(s.last_seq(r.id).await.expect("last_seq"), 2);

    // Other sender or other room: not a duplicate.
    let by_bob = append(&s, new_message(r.id, &bob, "bob", Some("k1"))).await;
    assert!(matches!(&by_bob, AppendOutcome::Created(m) if m.seq == 3));
    let elsewhere = append(&s, new_message(other.id, &alice, "x", Some("k1"))).await;
    assert!(matches!(&elsewhere, AppendOutcome::Created(m) if m.seq == 1));
    // No client_id: never a duplicate.
    let again = append(&s, new_message(r.id, &alice, "hello", None)).await;
    assert!(matches!(&again, AppendOutcome::Created(m) if m.seq == 4));
    // The duplicate after other appends is still the original.
    assert_eq!(
        append(&s, new_message(r.id, &alice, "third try", Some("k1"))).await,
        AppendOutcome::Duplicate(m2.clone())
    );
    assert_eq!(s.last_seq(r.id).await.expect("last_seq"), 4);
    assert_eq!(s.last_seq(other.id).await.expect("last_seq"), 1);

    let page = s
        .messages(r.id, HistoryPage::Latest, 10)
        .await
        .expect("page");
    assert_eq!(seqs(&page.messages), vec![1, 2, 3, 4]);
    assert_eq!(page.messages[0], m1);
    assert_eq!(page.messages[1], m2);
    assert_eq!(page.messages[2], by_bob.into_message());
    assert!(!page.has_more);

    // Content is kept exactly as sent: NUL and other control characters,
    // every plane of Unicode, surrounding whitespace.
    let odd = " nul\u{0} bell\u{7} \u{1F600} \u{10FFFF}\r\n ";
    let stored = append(&s, new_message(r.id, &alice, odd, Some("odd"))).await;
    let AppendOutcome::Created(stored) = stored else {
        panic!("odd content must append");
    };
    let page = s
        .messages(r.id, HistoryPage::After(4), 10)
        .await
        .expect("page");
    assert_eq!(page.messages, vec![stored.clone()]);
    assert_eq!(page.messages[0].content, odd);
}

/// `messages` over 250 messages: `Latest`, `Before`, `After`, `has_more` at
/// the boundaries, limit clamping, unknown rooms.
pub async fn pagination<S: Store>(s: S) {
    const N: u64 = 250;
    let alice = user("alice").user;
    let (r, owner) = room(alice.id, 1, Visibility::Public);
    create_room(&s, &r, &owner).await;
    for i in 1..=N {
        let m = append(&s, new_message(r.id, &alice, &format!("m{i}"), None)).await;
        assert_eq!(m.message().seq, i);
    }
    let page = |q, limit| {
        let s = &s;
        async move { s.messages(r.id, q, limit).await.expect("messages") }
    };
    let check = |p: super::Page, range: std::ops::RangeInclusive<u64>, more: bool| {
        assert_eq!(
            seqs(&p.messages),
            range.clone().collect::<Vec<_>>(),
            "{range:?}"
        );
        assert_eq!(p.has_more, more, "has_more for {range:?}");
        for m in &p.messages {
            assert_eq!(m.content, format!("m{}", m.seq));
        }
    };
    let none = |p: super::Page| {
        assert!(p.messages.is_empty(), "expected an empty page");
        assert!(!p.has_more);
    };
    check(page(HistoryPage::Latest, 50).await, 201..=250, true);
    check(page(HistoryPage::Latest, 1000).await, 151..=250, true);
    assert_eq!(MAX_PAGE, 100);
    check(page(HistoryPage::Latest, 0).await, 250..=250, true);
    check(page(HistoryPage::Before(201), 50).await, 151..=200, true);
    check(page(HistoryPage::Before(51), 50).await, 1..=50, false);
    check(page(HistoryPage::Before(52), 50).await, 2..=51, true);
    check(page(HistoryPage::Before(50), 100).await, 1..=49, false);
    check(page(HistoryPage::Before(2), 10).await, 1..=1, false);
    none(page(HistoryPage::Before(1), 10).await);
    none(page(HistoryPage::Before(0), 10).await);
    check(page(HistoryPage::Before(1000), 10).await, 241..=250, true);
    check(
        page(HistoryPage::Before(u64::MAX), 0).await,
        250..=250,
        true,
    );
    check(page(HistoryPage::After(200), 50).await, 201..=250, false);
    check(page(HistoryPage::After(199), 50).await, 200..=249, true);
    check(page(HistoryPage::After(249), 50).await, 250..=250, false);
    none(page(HistoryPage::After(250), 50).await);
    none(page(HistoryPage::After(u64::MAX), 50).await);
    check(page(HistoryPage::After(0), 1000).await, 1..=100, true);
    check(page(HistoryPage::After(0), 0).await, 1..=1, true);

    // Walking the whole history either way sees every message once.
    let mut back = Vec::new();
    let mut p = page(HistoryPage::Latest, 30).await;
    loop {
        let oldest = p.messages.first().map(|m| m.seq).expect("non-empty page");
        back.splice(0..0, seqs(&p.messages));
        if !p.has_more {
            break;
        }
        p = page(HistoryPage::Before(oldest), 30).await;
    }
    assert_eq!(back, (1..=N).collect::<Vec<_>>());
    let mut forward = Vec::new();
    let mut p = page(HistoryPage::After(0), 70).await;
    loop {
        let newest = p.messages.last().map(|m| m.seq).expect("non-empty page");
        forward.extend(seqs(&p.messages));
        if !p.has_more {
            break;
        }
        p = page(HistoryPage::After(newest), 70).await;
    }
    assert_eq!(forward, back);

    // A small room, and a room that does not exist.
    let (small, small_owner) = room(alice.id, 2, Visibility::Private);
    create_room(&s, &small, &small_owner).await;
    for i in 1..=3 {
        append(&s, new_message(small.id, &alice, &format!("m{i}"), None)).await;
    }
    let p = s
        .messages(small.id, HistoryPage::Latest, 100)
        .await
        .expect("page");
    check(p, 1..=3, false);
    let p = s
        .messages(small.id, HistoryPage::Latest, 3)
        .await
        .expect("page");
    check(p, 1..=3, false);
    let p = s
        .messages(small.id, HistoryPage::Latest, 2)
        .await
        .expect("page");
    check(p, 2..=3, true);
    none(
        s.messages(small.id, HistoryPage::After(3), 100)
            .await
            .expect("page"),
    );
    let missing = RoomId::new();
    for q in [
        HistoryPage::Latest,
        HistoryPage::Before(10),
        HistoryPage::After(0),
    ] {
        none(s.messages(missing, q, 10).await.expect("page"));
    }
}

/// `delete_room` removes the room, memberships (both directions),
/// messages, idempotency keys and sessions, and nothing of other rooms.
pub async fn delete_room_cascades<S: Store>(s: S) {
    let alice = user("alice").user;
    let bob = user("bob").user;
    let (r, owner) = room(alice.id, 1, Visibility::Public);
    let (keep, keep_owner) = room(alice.id, 2, Visibility::Public);
    create_room(&s, &r, &owner).await;
    create_room(&s, &keep, &keep_owner).await;
    assert!(
        s.add_member(membership(r.id, bob.id, 3))
            .await
            .expect("add")
    );
    assert!(
        s.add_member(membership(keep.id, bob.id, 3))
            .await
            .expect("add")
    );
    for i in 0..5 {
        append(&s, new_message(r.id, &alice, "x", Some(&format!("c{i}")))).await;
    }
    let kept_msg = append(&s, new_message(keep.id, &alice, "kept", Some("c0"))).await;
    let doomed = session(r.id, alice.id, bob.id, 1);
    let kept = session(keep.id, bob.id, alice.id, 2);
    s.put_session(doomed.clone()).await.expect("put");
    s.put_session(kept.clone()).await.expect("put");

    assert!(s.delete_room(r.id).await.expect("delete"));
    assert_eq!(s.room(r.id).await.expect("room"), None);
    assert_eq!(s.member(r.id, alice.id).await.expect("member"), None);
    assert_eq!(s.member(r.id, bob.id).await.expect("member"), None);
    assert!(s.members(r.id).await.expect("members").is_empty());
    assert_eq!(
        ids(&s.rooms_of(alice.id).await.expect("rooms_of"), |r| r.id),
        vec![keep.id]
    );
    assert_eq!(
        ids(&s.rooms_of(bob.id).await.expect("rooms_of"), |r| r.id),
        vec![keep.id]
    );
    assert_eq!(
        s.room_ids_of(bob.id).await.expect("room_ids_of"),
        vec![keep.id]
    );
    assert_eq!(
        ids(&s.public_rooms().await.expect("public"), |r| r.id),
        vec![keep.id]
    );
    assert_eq!(s.last_seq(r.id).await.expect("last_seq"), 0);
    let page = s
        .messages(r.id, HistoryPage::Latest, 100)
        .await
        .expect("page");
    assert!(page.messages.is_empty() && !page.has_more);
    assert_eq!(s.session(doomed.id).await.expect("session"), None);
    assert_eq!(
        s.sessions_of(alice.id).await.expect("sessions"),
        vec![kept.clone()]
    );
    assert!(!s.delete_room(r.id).await.expect("delete"));
    assert!(!s.delete_room(RoomId::new()).await.expect("delete"));

    // The other room is untouched.
    assert_eq!(
        s.room(keep.id)
            .await
            .expect("room")
            .expect("kept")
            .member_count,
        2
    );
    assert_eq!(
        append(&s, new_message(keep.id, &alice, "again", Some("c0"))).await,
        AppendOutcome::Duplicate(kept_msg.into_message())
    );

    // A room recreated under the same id starts afresh: seq from 1, no old
    // members, no old idempotency keys.
    create_room(&s, &r, &owner).await;
    assert_eq!(
        s.room(r.id)
            .await
            .expect("room")
            .expect("room")
            .member_count,
        1
    );
    assert_eq!(s.member(r.id, bob.id).await.expect("member"), None);
    let fresh = append(&s, new_message(r.id, &alice, "new", Some("c0"))).await;
    assert!(matches!(&fresh, AppendOutcome::Created(m) if m.seq == 1));
}

/// `put_session` (insert, upsert), `session`, `sessions_of` (either side,
/// oldest first), `delete_session`.
pub async fn sessions<S: Store>(s: S) {
    let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
    let r = RoomId::new();
    let s1 = session(r, alice, bob, 20);
    let s2 = session(r, bob, carol, 10);
    s.put_session(s1.clone()).await.expect("put");
    s.put_session(s2.clone()).await.expect("put");
    assert_eq!(s.session(s1.id).await.expect("session"), Some(s1.clone()));
    assert_eq!(
        s.sessions_of(bob).await.expect("of"),
        vec![s2.clone(), s1.clone()]
    );
    assert_eq!(s.sessions_of(alice).await.expect("of"), vec![s1.clone()]);
    assert_eq!(s.sessions_of(carol).await.expect("of"), vec![s2.clone()]);
    assert!(s.sessions_of(UserId::new()).await.expect("of").is_empty());

    // Upsert, with the target changed: the old party no longer sees it.
    let s1b = P2pSession {
        state: SessionState::Closed,
        target_user_id: carol,
        ..s1.clone()
    };
    s.put_session(s1b.clone()).await.expect("put");
    assert_eq!(s.session(s1.id).await.expect("session"), Some(s1b.clone()));
    assert_eq!(s.sessions_of(bob).await.expect("of"), vec![s2.clone()]);
    assert_eq!(
        s.sessions_of(carol).await.expect("of"),
        vec![s2.clone(), s1b.clone()]
    );

    // A session with oneself is listed once.
    let selfie = session(r, alice, alice, 30);
    s.put_session(selfie.clone()).await.expect("put");
    assert_eq!(
        s.sessions_of(alice).await.expect("of"),
        vec![s1b.clone(), selfie]
    );

    assert!(s.delete_session(s1.id).await.expect("delete"));
    assert!(!s.delete_session(s1.id).await.expect("delete"));
    assert_eq!(s.session(s1.id).await.expect("session"), None);
    assert_eq!(s.sessions_of(carol).await.expect("of"), vec![s2]);
}

/// The erased form ([`IntoDynStore::into_dyn`]) behaves as the store.
pub async fn erased<S: Store>(s: S) {
    let store = s.into_dyn();
    let alice = user("alice");
    assert!(store.create_user(alice.clone()).await.expect("create"));
    assert!(!store.create_user(alice.clone()).await.expect("create"));
    assert_eq!(
        store.user_by_name("alice").await.expect("by name"),
        Some(alice.clone())
    );
    let (r, owner) = room(alice.user.id, 1, Visibility::Public);
    store
        .create_room(r.clone(), owner)
        .await
        .expect("create_room");
    let m = store
        .append_message(new_message(r.id, &alice.user, "hi", None))
        .await
        .expect("append");
    assert_eq!(m.message().seq, 1);
    assert_eq!(store.last_seq(r.id).await.expect("last_seq"), 1);
}

// ---- concurrency ----

/// Tasks the concurrency test spawns.
pub const CONCURRENT_TASKS: usize = 8;
/// Messages each of them appends.
pub const APPENDS_PER_TASK: usize = 25;

/// Creates the room the concurrent appenders write to.
pub async fn concurrent_setup<S: Store>(s: &S) -> RoomId {
    let (r, owner) = room(UserId::new(), 1, Visibility::Public);
    create_room(s, &r, &owner).await;
    r.id
}

fn task_user(task: usize) -> User {
    User {
        id: UserId::from_bytes([task as u8 + 1; 16]),
        username: format!("task{task}"),
        display_name: format!("Task {task}"),
        created_at: ts(0),
    }
}

/// One appender: appends its messages, retrying every other one (the retry
/// must come back as the same message).
pub async fn concurrent_task<S: Store>(s: &S, room: RoomId, task: usize) {
    let sender = task_user(task);
    for i in 0..APPENDS_PER_TASK {
        let cid = format!("{task}-{i}");
        let m = new_message(room, &sender, &cid, Some(&cid));
        let AppendOutcome::Created(created) = append(s, m.clone()).await else {
            panic!("first send of {cid} must create");
        };
        if i % 2 == 0 {
            assert_eq!(append(s, m).await, AppendOutcome::Duplicate(created));
        }
    }
}

/// Every message is there exactly once, with seqs 1..=N and no gap.
pub async fn concurrent_check<S: Store>(s: &S, room: RoomId) {
    let total = (CONCURRENT_TASKS * APPENDS_PER_TASK) as u64;
    assert_eq!(s.last_seq(room).await.expect("last_seq"), total);
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let p = s
            .messages(room, HistoryPage::After(after), MAX_PAGE)
            .await
            .expect("page");
        after = p.messages.last().map_or(after, |m| m.seq);
        all.extend(p.messages);
        if !p.has_more {
            break;
        }
    }
    assert_eq!(seqs(&all), (1..=total).collect::<Vec<_>>());
    let mut contents: Vec<_> = all.iter().map(|m| m.content.clone()).collect();
    contents.sort();
    contents.dedup();
    assert_eq!(contents.len() as u64, total, "every message exactly once");
    // Each task's messages are in its own order.
    for task in 0..CONCURRENT_TASKS {
        let mine: Vec<_> = all
            .iter()
            .filter(|m| m.sender.id == task_user(task).id)
            .map(|m| m.content.clone())
            .collect();
        let expected: Vec<_> = (0..APPENDS_PER_TASK)
            .map(|i| format!("{task}-{i}"))
            .collect();
        assert_eq!(mine, expected);
    }
}

// ---- restart ----

/// What [`populate`] wrote, for [`verify_populated`].
#[derive(Debug)]
pub struct Populated {
    user: UserRecord,
    device: DeviceRecord,
    room: Room,
    members: Vec<Membership>,
    messages: Vec<Message>,
    session: P2pSession,
}

/// Writes one of everything (for a restart test).
pub async fn populate<S: Store>(s: &S) -> Populated {
    let alice = user("alice");
    let bob = user("bob");
    assert!(s.create_user(alice.clone()).await.expect("create"));
    assert!(s.create_user(bob.clone()).await.expect("create"));
    let device = DeviceRecord {
        id: DeviceId::new(),
        user_id: alice.user.id,
        name: "laptop".into(),
        created_at: ts(1),
        revoked: false,
    };
    s.put_device(device.clone()).await.expect("device");
    let (r, owner) = room(alice.user.id, 1, Visibility::Public);
    create_room(s, &r, &owner).await;
    let bob_m = membership(r.id, bob.user.id, 2);
    assert!(s.add_member(bob_m.clone()).await.expect("add"));
    let mut messages = Vec::new();
    for i in 0..5 {
        let cid = format!("c{i}");
        messages.push(
            append(s, new_message(r.id, &bob.user, "x", Some(&cid)))
                .await
                .into_message(),
        );
    }
    let session = session(r.id, alice.user.id, bob.user.id, 3);
    s.put_session(session.clone()).await.expect("session");
    Populated {
        user: alice,
        device,
        room: Room {
            member_count: 2,
            ..r
        },
        members: vec![owner, bob_m],
        messages,
        session,
    }
}

/// Checks that everything [`populate`] wrote is there, and that the store
/// carries on where it was (next seq, idempotency keys).
pub async fn verify_populated<S: Store>(s: &S, w: &Populated) {
    assert_eq!(
        s.user(w.user.user.id).await.expect("user"),
        Some(w.user.clone())
    );
    assert_eq!(
        s.user_by_name("alice").await.expect("by name"),
        Some(w.user.clone())
    );
    assert!(
        !s.create_user(user("alice")).await.expect("create"),
        "username still taken"
    );
    assert_eq!(
        s.device(w.device.id).await.expect("device"),
        Some(w.device.clone())
    );
    assert_eq!(
        s.devices_of(w.user.user.id).await.expect("devices"),
        vec![w.device.clone()]
    );
    assert_eq!(s.room(w.room.id).await.expect("room"), Some(w.room.clone()));
    assert_eq!(
        s.public_rooms().await.expect("public"),
        vec![w.room.clone()]
    );
    assert_eq!(s.members(w.room.id).await.expect("members"), w.members);
    let page = s
        .messages(w.room.id, HistoryPage::Latest, 100)
        .await
        .expect("page");
    assert_eq!(page.messages, w.messages);
    assert_eq!(
        s.session(w.session.id).await.expect("session"),
        Some(w.session.clone())
    );
    let last = &w.messages[w.messages.len() - 1];
    let retry = NewMessage {
        id: MessageId::new(),
        room_id: w.room.id,
        sender: last.sender.clone(),
        content: "retry".into(),
        created_at: ts(5),
        client_id: last.client_id.clone(),
    };
    assert_eq!(
        append(s, retry).await,
        AppendOutcome::Duplicate(last.clone())
    );
    let next = append(s, new_message(w.room.id, &last.sender, "next", None)).await;
    assert_eq!(next.message().seq, last.seq + 1);
}

// ---- the model-based property test ----

const USERS: u8 = 4;
const ROOMS: u8 = 2;

fn model_user(i: u8) -> User {
    User {
        id: UserId::from_bytes([i + 1; 16]),
        username: format!("user{i}"),
        display_name: format!("User {i}"),
        created_at: ts(0),
    }
}

fn model_room_id(i: u8) -> RoomId {
    // Spread the ids so their order differs from the index order.
    RoomId::from_bytes([(ROOMS - i) * 40; 16])
}

/// One step of the model-based test.
#[derive(Clone, Debug)]
pub enum Op {
    /// `create_user` with pool ids and names (so both can clash).
    CreateUser {
        id: u8,
        name: u8,
    },
    CreateRoom {
        room: u8,
        owner: u8,
        public: bool,
        at: u8,
    },
    UpdateRoom {
        room: u8,
        public: Option<bool>,
        topic: Option<Option<u8>>,
    },
    DeleteRoom {
        room: u8,
    },
    AddMember {
        room: u8,
        user: u8,
        admin: bool,
        at: u8,
    },
    RemoveMember {
        room: u8,
        user: u8,
    },
    SetRole {
        room: u8,
        user: u8,
        admin: bool,
    },
    Append {
        room: u8,
        sender: u8,
        client_id: Option<u8>,
    },
    Page {
        room: u8,
        query: ModelQuery,
        limit: u8,
    },
    /// Drop the store and open it again (persistent stores only).
    Restart,
}

/// A [`HistoryPage`] whose seq is taken modulo the room's `last_seq + 2`.
#[derive(Clone, Copy, Debug)]
pub enum ModelQuery {
    Latest,
    Before(u8),
    After(u8),
}

fn op_strategy(persistent: bool) -> BoxedStrategy<Op> {
    let room = 0..ROOMS;
    // Most messages go to room 0, so that its history grows long enough for
    // paging to have boundaries.
    let busy_room = prop_oneof![3 => Just(0u8), 1 => 0..ROOMS];
    let user = 0..USERS;
    let query = prop_oneof![
        Just(ModelQuery::Latest),
        any::<u8>().prop_map(ModelQuery::Before),
        any::<u8>().prop_map(ModelQuery::After),
    ];
    let ops = prop_oneof![
        1 => (user.clone(), user.clone()).prop_map(|(id, name)| Op::CreateUser { id, name }),
        2 => (room.clone(), user.clone(), any::<bool>(), 0u8..3)
            .prop_map(|(room, owner, public, at)| Op::CreateRoom { room, owner, public, at }),
        1 => (room.clone(), proptest::option::of(any::<bool>()), proptest::option::of(proptest::option::of(0u8..3)))
            .prop_map(|(room, public, topic)| Op::UpdateRoom { room, public, topic }),
        1 => room.clone().prop_map(|room| Op::DeleteRoom { room }),
        3 => (room.clone(), user.clone(), any::<bool>(), 0u8..3)
            .prop_map(|(room, user, admin, at)| Op::AddMember { room, user, admin, at }),
        1 => (room.clone(), user.clone()).prop_map(|(room, user)| Op::RemoveMember { room, user }),
        1 => (room.clone(), user.clone(), any::<bool>())
            .prop_map(|(room, user, admin)| Op::SetRole { room, user, admin }),
        10 => (busy_room.clone(), user.clone(), proptest::option::of(0u8..3))
            .prop_map(|(room, sender, client_id)| Op::Append { room, sender, client_id }),
        5 => (busy_room, query, 0u8..5).prop_map(|(room, query, limit)| Op::Page { room, query, limit }),
    ];
    if persistent {
        prop_oneof![10 => ops, 1 => Just(Op::Restart)].boxed()
    } else {
        ops.boxed()
    }
}

#[derive(Debug, Default)]
struct Model {
    users: BTreeMap<UserId, UserRecord>,
    rooms: BTreeMap<RoomId, ModelRoom>,
}

#[derive(Debug)]
struct ModelRoom {
    room: Room,
    members: BTreeMap<UserId, Membership>,
    messages: Vec<Message>,
    keys: BTreeMap<(UserId, String), u64>,
}

impl Model {
    fn room_out(&self, id: RoomId) -> Option<Room> {
        self.rooms.get(&id).map(|r| Room {
            member_count: r.members.len() as u64,
            ..r.room.clone()
        })
    }

    fn sorted_rooms(&self, filter: impl Fn(&ModelRoom) -> bool) -> Vec<Room> {
        let mut rooms: Vec<Room> = self
            .rooms
            .values()
            .filter(|r| filter(r))
            .filter_map(|r| self.room_out(r.room.id))
            .collect();
        rooms.sort_by_key(|r| (r.created_at, r.id));
        rooms
    }
}

/// The future type [`model_test`] hands to its `block_on`.
pub type ModelFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TestCaseError>> + 'a>>;

/// Runs random operations against stores made by `open` (given a fresh
/// directory per case) and against a `BTreeMap` model, comparing every
/// answer and, after each step, every room, member list, `rooms_of`,
/// `public_rooms`, user and `last_seq` of the pool. With `persistent`, the
/// operations include [`Op::Restart`]: drop the store, `open` the same
/// directory again. `block_on` runs a future to completion (the macro passes
/// a current-thread tokio runtime's).
///
/// 32 cases of at most 40 random operations (after creating the pool's
/// rooms); set `PROPTEST_CASES` for more.
pub fn model_test<S, F, Fut>(
    open: F,
    persistent: bool,
    block_on: &dyn Fn(ModelFuture<'_>) -> Result<(), TestCaseError>,
) where
    S: Store,
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = S>,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ops = proptest::collection::vec(op_strategy(persistent), 1..=40);
    let result = runner.run(&ops, |ops| {
        let dir = TempDir::new();
        let result = block_on(Box::pin(run_ops(&open, dir.path(), ops)));
        drop(dir);
        result
    });
    if let Err(e) = result {
        panic!("model-based test failed: {e}");
    }
}

async fn run_ops<S, F, Fut>(open: &F, dir: &Path, ops: Vec<Op>) -> Result<(), TestCaseError>
where
    S: Store,
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = S>,
{
    let mut store = open(dir.to_path_buf()).await;
    let mut model = Model::default();
    // Start with every room of the pool, so that appends and pages have
    // somewhere to go from the first step.
    let setup = (0..ROOMS).map(|room| Op::CreateRoom {
        room,
        owner: room,
        public: room % 2 == 0,
        at: room,
    });
    let ops: Vec<Op> = setup.chain(ops).collect();
    let fail = |e: S::Error| TestCaseError::fail(format!("store error: {e}"));
    for (step, op) in ops.into_iter().enumerate() {
        let s = &store;
        match op.clone() {
            Op::Restart => {
                drop(store);
                store = open(dir.to_path_buf()).await;
            }
            Op::CreateUser { id, name } => {
                let mut record = UserRecord {
                    user: model_user(id),
                    password_hash: String::new(),
                };
                record.user.username = format!("user{name}");
                let free = !model.users.contains_key(&record.user.id)
                    && !model
                        .users
                        .values()
                        .any(|u| u.user.username == record.user.username);
                prop_assert_eq!(
                    s.create_user(record.clone()).await.map_err(fail)?,
                    free,
                    "{:?}",
                    op
                );
                if free {
                    model.users.insert(record.user.id, record);
                }
            }
            Op::CreateRoom {
                room,
                owner,
                public,
                at,
            } => {
                let id = model_room_id(room);
                if model.rooms.contains_key(&id) {
                    continue; // Creating an existing id is not part of the contract.
                }
                let owner = model_user(owner).id;
                let room = Room {
                    id,
                    name: format!("room{step}"),
                    topic: None,
                    visibility: if public {
                        Visibility::Public
                    } else {
                        Visibility::Private
                    },
                    created_by: owner,
                    created_at: ts(at.into()),
                    member_count: 7,
                };
                let m = Membership {
                    room_id: id,
                    user_id: owner,
                    role: Role::Owner,
                    joined_at: ts(at.into()),
                };
                s.create_room(room.clone(), m.clone()).await.map_err(fail)?;
                model.rooms.insert(
                    id,
                    ModelRoom {
                        room,
                        members: BTreeMap::from([(owner, m)]),
                        messages: Vec::new(),
                        keys: BTreeMap::new(),
                    },
                );
            }
            Op::UpdateRoom {
                room,
                public,
                topic,
            } => {
                let id = model_room_id(room);
                let update = RoomUpdate {
                    name: Some(format!("renamed{step}")),
                    topic: topic.map(|t| t.map(|t| format!("topic{t}"))),
                    visibility: public.map(|p| {
                        if p {
                            Visibility::Public
                        } else {
                            Visibility::Private
                        }
                    }),
                };
                if let Some(r) = model.rooms.get_mut(&id) {
                    super::apply_update(&mut r.room, update.clone());
                }
                prop_assert_eq!(
                    s.update_room(id, update).await.map_err(fail)?,
                    model.room_out(id),
                    "{:?}",
                    op
                );
            }
            Op::DeleteRoom { room } => {
                let id = model_room_id(room);
                let existed = model.rooms.remove(&id).is_some();
                prop_assert_eq!(s.delete_room(id).await.map_err(fail)?, existed, "{:?}", op);
            }
            Op::AddMember {
                room,
                user,
                admin,
                at,
            } => {
                let id = model_room_id(room);
                let Some(r) = model.rooms.get_mut(&id) else {
                    continue; // Members of missing rooms: not part of the contract.
                };
                let user = model_user(user).id;
                let m = Membership {
                    room_id: id,
                    user_id: user,
                    role: if admin { Role::Admin } else { Role::Member },
                    joined_at: ts(at.into()),
                };
                let new = !r.members.contains_key(&user);
                if new {
                    r.members.insert(user, m.clone());
                }
                prop_assert_eq!(s.add_member(m).await.map_err(fail)?, new, "{:?}", op);
            }
            Op::RemoveMember { room, user } => {
                let id = model_room_id(room);
                let user = model_user(user).id;
                let was = model
                    .rooms
                    .get_mut(&id)
                    .and_then(|r| r.members.remove(&user))
                    .is_some();
                prop_assert_eq!(
                    s.remove_member(id, user).await.map_err(fail)?,
                    was,
                    "{:?}",
                    op
                );
            }
            Op::SetRole { room, user, admin } => {
                let id = model_room_id(room);
                let user = model_user(user).id;
                let role = if admin { Role::Admin } else { Role::Member };
                let found = match model
                    .rooms
                    .get_mut(&id)
                    .and_then(|r| r.members.get_mut(&user))
                {
                    Some(m) => {
                        m.role = role;
                        true
                    }
                    None => false,
                };
                prop_assert_eq!(
                    s.set_role(id, user, role).await.map_err(fail)?,
                    found,
                    "{:?}",
                    op
                );
            }
            Op::Append {
                room,
                sender,
                client_id,
            } => {
                let id = model_room_id(room);
                let Some(r) = model.rooms.get_mut(&id) else {
                    continue; // Appending to a missing room: not part of the contract.
                };
                let sender = model_user(sender);
                let client_id = client_id.map(|c| format!("c{c}"));
                let m = NewMessage {
                    id: MessageId::new(),
                    room_id: id,
                    sender: sender.clone(),
                    content: format!("step {step}"),
                    created_at: ts(step as i64),
                    client_id: client_id.clone(),
                };
                let earlier = client_id
                    .as_ref()
                    .and_then(|c| r.keys.get(&(sender.id, c.clone())))
                    .and_then(|&seq| r.messages.get(seq as usize - 1))
                    .cloned();
                let expected = match earlier {
                    Some(e) => AppendOutcome::Duplicate(e),
                    None => {
                        let msg = Message {
                            id: m.id,
                            room_id: id,
                            seq: r.messages.len() as u64 + 1,
                            sender: sender.clone(),
                            content: m.content.clone(),
                            created_at: m.created_at,
                            client_id: client_id.clone(),
                        };
                        if let Some(c) = client_id {
                            r.keys.insert((sender.id, c), msg.seq);
                        }
                        r.messages.push(msg.clone());
                        AppendOutcome::Created(msg)
                    }
                };
                prop_assert_eq!(
                    s.append_message(m).await.map_err(fail)?,
                    expected,
                    "{:?}",
                    op
                );
            }
            Op::Page { room, query, limit } => {
                let id = model_room_id(room);
                let all: &[Message] = model.rooms.get(&id).map_or(&[], |r| &r.messages);
                // Aim at 0..=last_seq+1, where the boundaries are.
                let near = |x: u8| u64::from(x) % (all.len() as u64 + 2);
                let query = match query {
                    ModelQuery::Latest => HistoryPage::Latest,
                    ModelQuery::Before(x) => HistoryPage::Before(near(x)),
                    ModelQuery::After(x) => HistoryPage::After(near(x)),
                };
                let limit = usize::from(limit).clamp(1, MAX_PAGE);
                // The spec, literally: filter, then take from the near end.
                let (page, has_more) = match query {
                    HistoryPage::Latest => {
                        let start = all.len().saturating_sub(limit);
                        (all[start..].to_vec(), start > 0)
                    }
                    HistoryPage::Before(b) => {
                        let older: Vec<_> = all.iter().filter(|m| m.seq < b).cloned().collect();
                        let start = older.len().saturating_sub(limit);
                        (older[start..].to_vec(), start > 0)
                    }
                    HistoryPage::After(a) => {
                        let newer: Vec<_> = all.iter().filter(|m| m.seq > a).cloned().collect();
                        let more = newer.len() > limit;
                        (newer.into_iter().take(limit).collect(), more)
                    }
                };
                let got = s.messages(id, query, limit).await.map_err(fail)?;
                prop_assert_eq!(&got.messages, &page, "{:?}", op);
                prop_assert_eq!(got.has_more, has_more, "{:?}", op);
            }
        }
        check_state(&store, &model)
            .await
            .map_err(|e| TestCaseError::fail(format!("after step {step} ({op:?}): {e}")))?;
    }
    Ok(())
}

/// Compares everything observable about the pool with the model.
async fn check_state<S: Store>(s: &S, model: &Model) -> Result<(), TestCaseError> {
    let fail = |e: S::Error| TestCaseError::fail(format!("store error: {e}"));
    for i in 0..ROOMS {
        let id = model_room_id(i);
        prop_assert_eq!(
            s.room(id).await.map_err(fail)?,
            model.room_out(id),
            "room {}",
            i
        );
        let expected = model.rooms.get(&id).map_or(0, |r| r.messages.len() as u64);
        prop_assert_eq!(
            s.last_seq(id).await.map_err(fail)?,
            expected,
            "last_seq {}",
            i
        );
        let mut members: Vec<Membership> = model
            .rooms
            .get(&id)
            .map(|r| r.members.values().cloned().collect())
            .unwrap_or_default();
        members.sort_by_key(|m| (m.joined_at, m.user_id));
        prop_assert_eq!(s.members(id).await.map_err(fail)?, members, "members {}", i);
    }
    for i in 0..USERS {
        let u = model_user(i);
        prop_assert_eq!(
            s.user(u.id).await.map_err(fail)?,
            model.users.get(&u.id).cloned()
        );
        let by_name = model
            .users
            .values()
            .find(|r| r.user.username == u.username)
            .cloned();
        prop_assert_eq!(s.user_by_name(&u.username).await.map_err(fail)?, by_name);
        let rooms = model.sorted_rooms(|r| r.members.contains_key(&u.id));
        prop_assert_eq!(
            s.rooms_of(u.id).await.map_err(fail)?,
            rooms,
            "rooms_of {}",
            i
        );
    }
    let public = model.sorted_rooms(|r| r.room.visibility == Visibility::Public);
    prop_assert_eq!(s.public_rooms().await.map_err(fail)?, public);
    Ok(())
}
