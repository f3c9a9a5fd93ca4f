//! The chat scenario through mesh-wasm in headless Chromium, against a real
//! mesh-server: the browser's own `fetch` and `WebSocket` drive the client.
//!
//! `scripts/test.sh` starts a server on a free port and runs this with
//! `wasm-bindgen-test-runner` and Debian's chromedriver:
//!
//! ```sh
//! MESH_TEST_SERVER=http://127.0.0.1:PORT CHROMEDRIVER=/usr/bin/chromedriver \
//!   CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
//!   cargo test -p mesh-wasm --target wasm32-unknown-unknown --test browser
//! ```
//!
//! The server's address is read at compile time (a test in a browser has no
//! environment); a waiting test that never hears its event fails at the
//! runner's timeout.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)]

use futures_channel::mpsc;
use futures_util::StreamExt;
use js_sys::{Function, Reflect};
use mesh_wasm::{MeshApi, MeshClient, connect};
use wasm_bindgen::convert::TryFromJsValue;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const PASSWORD: &str = "correct horse battery";

fn server() -> String {
    // Not `env!`: the crate must still build (and lint) without a server.
    match option_env!("MESH_TEST_SERVER") {
        Some(url) => url.to_owned(),
        None => panic!(
            "build this test with MESH_TEST_SERVER=http://host:port of a running mesh-server"
        ),
    }
}

fn get(v: &JsValue, path: &str) -> JsValue {
    path.split('.').fold(v.clone(), |v, name| {
        Reflect::get(&v, &name.into()).unwrap_or(JsValue::UNDEFINED)
    })
}

fn text(v: &JsValue, path: &str) -> String {
    get(v, path)
        .as_string()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

/// A unique user name (the server keeps users across tests).
fn name(prefix: &str) -> String {
    format!("{prefix}{}", (js_sys::Math::random() * 1e12) as u64)
}

async fn resolve(p: js_sys::Promise) -> Result<JsValue, JsValue> {
    JsFuture::from(p).await
}

/// A client's events, in order.
struct Events(mpsc::UnboundedReceiver<JsValue>);

impl Events {
    /// The first event of `kind` for which `pick` holds.
    async fn wait_for(&mut self, kind: &str, pick: impl Fn(&JsValue) -> bool) -> JsValue {
        while let Some(event) = self.0.next().await {
            if get(&event, "type").as_string().as_deref() == Some(kind) && pick(&event) {
                return event;
            }
        }
        panic!("the event stream ended before a {kind} event");
    }
}

/// Registers `username` and connects it.
async fn sign_up(username: &str) -> (MeshClient, Events, JsValue) {
    let api = MeshApi::new(&server()).unwrap();
    let auth = resolve(api.register(username.into(), PASSWORD.into(), None))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded();
    let on_event = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let _ = tx.unbounded_send(e);
    });
    let on_event: Function = on_event.into_js_value().unchecked_into();
    let client = resolve(connect(
        server(),
        text(&auth, "token"),
        on_event,
        Some("chromium".into()),
    ))
    .await
    .unwrap();
    // `connect` resolves with the exported class; take the Rust value back.
    let client = MeshClient::try_from_js_value(client).expect("a MeshClient");
    (client, Events(rx), get(&auth, "user"))
}

#[wasm_bindgen_test]
async fn two_users_chat_in_the_browser() {
    let (alice, mut alice_events, alice_user) = sign_up(&name("alice")).await;
    let (bob, mut bob_events, bob_user) = sign_up(&name("bob")).await;

    let room = resolve(alice.create_room("browser".into(), Some("wasm".into()), false))
        .await
        .unwrap();
    let room_id = text(&room, "id");
    let members = resolve(bob.join_room(&room_id).unwrap()).await.unwrap();
    assert_eq!(js_sys::Array::from(&members).length(), 2);

    let sent = resolve(
        alice
            .send_message(&room_id, "hello from chromium".into())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(get(&sent, "seq").as_f64(), Some(1.0));
    let got = bob_events
        .wait_for("message", |e| get(e, "message.seq").as_f64() == Some(1.0))
        .await;
    assert_eq!(text(&got, "message.content"), "hello from chromium");
    assert_eq!(text(&got, "message.sender.id"), text(&alice_user, "id"));

    bob.set_typing(&room_id, true).unwrap();
    let typing = alice_events.wait_for("typing", |_| true).await;
    assert_eq!(text(&typing, "user_id"), text(&bob_user, "id"));
    assert_eq!(get(&typing, "typing").as_bool(), Some(true));

    for i in 2..=6 {
        resolve(bob.send_message(&room_id, format!("message {i}")).unwrap())
            .await
            .unwrap();
    }
    let newest = resolve(alice.history(&room_id, None, None, Some(2)).unwrap())
        .await
        .unwrap();
    let seqs = |page: &JsValue| -> Vec<f64> {
        js_sys::Array::from(&get(page, "messages"))
            .iter()
            .filter_map(|m| get(&m, "seq").as_f64())
            .collect()
    };
    assert_eq!(seqs(&newest), vec![5.0, 6.0]);
    assert_eq!(get(&newest, "has_more").as_bool(), Some(true));
    let older = resolve(alice.history(&room_id, Some(5.0), None, Some(10)).unwrap())
        .await
        .unwrap();
    assert_eq!(seqs(&older), vec![1.0, 2.0, 3.0, 4.0]);

    alice.close();
    bob.close();
}

#[wasm_bindgen_test]
async fn refusals_arrive_as_errors_with_the_contract_code() {
    let username = name("carol");
    let api = MeshApi::new(&server()).unwrap();
    resolve(api.register(username.clone(), PASSWORD.into(), None))
        .await
        .unwrap();
    let e = resolve(api.login(username, "not the password".into()))
        .await
        .expect_err("a wrong password");
    assert!(e.is_instance_of::<js_sys::Error>());
    assert_eq!(text(&e, "code"), "unauthorized");

    let noop: Function = Closure::<dyn FnMut(JsValue)>::new(|_| {})
        .into_js_value()
        .unchecked_into();
    let e = resolve(connect(server(), "not-a-token".into(), noop, None))
        .await
        .expect_err("a bad token");
    assert_eq!(text(&e, "code"), "unauthorized");

    let (owner, _, _) = sign_up(&name("dave")).await;
    let (outsider, _, _) = sign_up(&name("eve")).await;
    let secret = resolve(owner.create_room("secret".into(), None, true))
        .await
        .unwrap();
    let e = resolve(
        outsider
            .send_message(&text(&secret, "id"), "let me in".into())
            .unwrap(),
    )
    .await
    .expect_err("not a member");
    assert_eq!(text(&e, "code"), "forbidden");
    owner.close();
    outsider.close();
}
