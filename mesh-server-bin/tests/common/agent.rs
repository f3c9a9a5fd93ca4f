//! A P2P agent for tests: a user's client connected to a server, with a
//! QUIC endpoint that accepts sessions whose tokens the server signs.

use std::time::Duration;

use mesh_core::auth::TokenVerifier;
use mesh_core::client::{Client, Event, EventStream, HttpApi, P2pSessionGrant};
use mesh_core::p2p::{
    AgentIdentity, ExpectedSession, IncomingSession, OutgoingSession, P2pEndpoint, P2pError,
};
use mesh_core::protocol::http::RegisterRequest;
use mesh_core::protocol::{P2pInfo, PeerId, SessionId, Timestamp};

use super::{TestServer, WAIT};

pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// An agent: a user's client connected to the server, announcing the
/// certificate fingerprint and address of its QUIC endpoint, which accepts
/// sessions whose tokens the server's keys sign and that name its peer id.
pub struct Agent {
    pub client: Client,
    pub events: EventStream,
    pub me: PeerId,
    pub info: P2pInfo,
    pub endpoint: P2pEndpoint,
}

/// How an agent's endpoint differs from a plain one.
#[derive(Default)]
pub struct Tweaks {
    /// The identity it announces and listens with (default: a fresh one).
    pub identity: Option<AgentIdentity>,
    /// Its clock runs this many milliseconds ahead.
    pub clock_ahead_ms: i64,
    /// The addresses it announces instead of the one it is bound to (one
    /// nothing answers at: no direct path).
    pub announce: Option<Vec<String>>,
}

impl Agent {
    pub async fn start(server: &TestServer, name: &str, tweaks: Tweaks) -> Self {
        let url = format!("http://{}", server.addr);
        let api = HttpApi::new(&url).expect("api");
        let auth = guard(
            "register",
            api.register(&RegisterRequest {
                username: name.into(),
                password: "correct horse battery".into(),
                ..RegisterRequest::default()
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
        let jwks = guard("keys", api.keys()).await.expect("GET /api/auth/keys");
        let verifier = TokenVerifier::from_jwks(&jwks).expect("the server's JWK Set");

        let identity = match tweaks.identity {
            Some(i) => i,
            None => AgentIdentity::generate().expect("identity"),
        };
        let ahead = tweaks.clock_ahead_ms;
        // Bound first, so the connect announces its address; it learns its
        // peer id from the server's welcome (as `mesh-cli` does).
        let endpoint = P2pEndpoint::builder(identity)
            .accept_sessions(verifier)
            .clock(move || Timestamp::from_unix_millis(Timestamp::now().unix_millis() + ahead))
            .connect_timeout(Duration::from_secs(5))
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let mut info = endpoint.p2p_info(Vec::new());
        if let Some(addrs) = tweaks.announce {
            info.addrs = addrs;
        }
        let client = guard(
            "connect",
            Client::builder()
                .server(url.clone())
                .token(auth.token)
                .device_name(format!("{name}-agent"))
                .p2p(info.clone())
                .connect(),
        )
        .await
        .expect("client connects");
        let events = client.events().expect("event stream");
        let (me, _) = client.me().expect("welcomed");
        endpoint.set_peer_id(me);
        Self {
            client,
            events,
            me,
            info,
            endpoint,
        }
    }

    /// The `p2p.session.created` for `session`, as the server pushed it.
    pub async fn grant(&mut self, session: SessionId) -> P2pSessionGrant {
        guard("p2p.session.created", async {
            loop {
                match self.events.next().await {
                    Some(Event::P2pSessionCreated(g)) if g.session.id == session => return *g,
                    Some(_) => continue,
                    None => panic!("event stream ended"),
                }
            }
        })
        .await
    }

    /// As the target: expect the session the server announced.
    pub fn expect(&self, grant: &P2pSessionGrant) {
        assert_eq!(grant.session.target_peer_id, self.me);
        self.endpoint.expect_session(
            ExpectedSession::from_announcement(&grant.session, &grant.initiator)
                .expect("the initiator announced a fingerprint"),
        );
    }

    pub async fn accept(&self) -> Result<IncomingSession, P2pError> {
        guard("accept", self.endpoint.accept())
            .await
            .expect("the endpoint is open")
    }
}

/// Connects `from` (or another endpoint) to what `grant` announced, with
/// `token` for `hello_session`, and accepts at `target` at the same time.
pub async fn attempt(
    from: &P2pEndpoint,
    peer: &P2pInfo,
    hello_session: SessionId,
    token: &str,
    target: &Agent,
) -> (
    Result<OutgoingSession, P2pError>,
    Result<IncomingSession, P2pError>,
) {
    guard("connect and accept", async {
        tokio::join!(from.connect_to(peer, hello_session, token), target.accept())
    })
    .await
}
