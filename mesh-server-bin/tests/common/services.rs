//! The services some tests need, as `scripts/services.sh` starts them:
//! PostgreSQL (`MESH_TEST_POSTGRES`) and nats-server (`MESH_TEST_NATS`).
//! Without them a test returns at once, except under `CI=true`, where it
//! fails. And a TCP proxy a test can cut, to make a service unreachable
//! without stopping it for the other tests.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::storage::postgres::tokio_postgres::{self, NoTls};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The URL in `var`, or `None` (outside CI) when it is not set.
pub fn service_url(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{var} is not set: CI must run the {what} tests (scripts/test.sh starts one)"
            );
            eprintln!("skipped: {var} is not set (`source scripts/services.sh; start_services`)");
            None
        }
    }
}

/// A fresh, empty database on the test PostgreSQL; its URL.
pub async fn pg_database() -> Option<String> {
    let url = service_url("MESH_TEST_POSTGRES", "PostgreSQL")?;
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    let connection = tokio::spawn(connection);
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    drop(client);
    let _ = connection.await;
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    Some(format!("{base}/{name}"))
}

/// A TCP proxy to `target` that the test can cut: while it is down, every
/// connection through it is dropped and new ones are closed at once.
pub struct CutProxy {
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(watch::Sender::new(true));
        let watch_up = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut up = watch_up.subscribe();
                if !*up.borrow_and_update() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// `url` (host:port after `@`) pointed at this proxy instead.
    pub fn rewrite(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').expect("user@host in the URL");
        let (_, path) = rest.split_once('/').expect("a path in the URL");
        format!("{scheme_user}@{}/{path}", self.addr)
    }
}

/// The host:port of a `scheme://user@host:port/...` URL.
pub fn url_addr(url: &str) -> SocketAddr {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
    let hostport = rest.split('/').next().expect("host:port");
    hostport.parse().expect("a numeric host:port")
}
