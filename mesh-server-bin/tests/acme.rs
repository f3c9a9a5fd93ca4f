//! Automatic certificates: the real `mesh-server` binary orders a
//! certificate over ACME from Debian's `pebble` (a test ACME server), answers
//! the HTTP-01 challenge on its `--http-listen` port, and serves what it got;
//! a restart serves the cached certificate without a new order.
//!
//! pebble checks the challenge by resolving the name through
//! `pebble-challtestsrv`'s DNS (every name is 127.0.0.1) and fetching
//! `http://NAME:<httpPort>/.well-known/acme-challenge/TOKEN`. Everything
//! runs on free loopback ports in a temporary folder and is killed at the
//! end. Without pebble the test is skipped, except under `CI=true`, where it
//! fails.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::process::start_binary;
use common::services::{pg_database, service_url};
use common::tls::TestCa;
use mesh_core::client::TlsConfig;

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

fn have(cmd: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{cmd} (Debian's pebble) is missing, and CI=true: the ACME test must run"
        );
        eprintln!("SKIPPED: {cmd} is not installed (apt-get install pebble)");
    }
    found
}

/// Waits until something accepts TCP on `port` (the test services give no
/// ready signal); a hang guard of 10 s.
fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// pebble's issuing root (made anew at each start), from its management port.
async fn pebble_root(mgmt: u16, pebble_ca: &TestCa) -> String {
    let tls = TlsConfig::with_ca_pem(pebble_ca.pem().as_bytes()).expect("CA");
    let http = tls.http_client().expect("client");
    http.get(format!("https://localhost:{mgmt}/roots/0"))
        .send()
        .await
        .expect("pebble management")
        .text()
        .await
        .expect("root PEM")
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write");
    path.display().to_string()
}

/// pebble and its DNS (every name is 127.0.0.1), checking HTTP-01
/// challenges on `http_port`.
struct Pebble {
    _dns: Killed,
    _pebble: Killed,
    acme_port: u16,
    mgmt_port: u16,
    /// The test CA of pebble's own HTTPS, and its file.
    ca: TestCa,
    ca_file: String,
}

impl Pebble {
    fn start(dir: &Path, http_port: u16) -> Self {
        // pebble's own HTTPS (its directory) gets a certificate from a test CA.
        let ca = TestCa::new("pebble directory CA");
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
        let pebble_cert = write(dir, "pebble-cert.pem", &leaf.cert_pem);
        let pebble_key = write(dir, "pebble-key.pem", &leaf.key_pem);
        let ca_file = write(dir, "pebble-ca.pem", ca.pem());

        let (acme_port, mgmt_port, dns_port) = (free_port(), free_port(), free_udp_port());
        let dns_mgmt = free_port();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": pebble_cert,
            "privateKey": pebble_key,
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        let config_file = write(dir, "pebble.json", &config.to_string());

        let dns = Killed(
            Command::new("pebble-challtestsrv")
                .args([
                    "-dns01",
                    &format!("127.0.0.1:{dns_port}"),
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    &format!("127.0.0.1:{dns_mgmt}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pebble-challtestsrv"),
        );
        let pebble = Killed(
            Command::new("pebble")
                .args([
                    "-config",
                    &config_file,
                    "-dnsserver",
                    &format!("127.0.0.1:{dns_port}"),
                ])
                // No random waits, no random nonce rejections: a steady test.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pebble"),
        );
        wait_listening(dns_mgmt);
        wait_listening(acme_port);
        wait_listening(mgmt_port);
        Self {
            _dns: dns,
            _pebble: pebble,
            acme_port,
            mgmt_port,
            ca,
            ca_file,
        }
    }

    /// mesh-server's flags to order `name` here, answering on `http_port`.
    fn flags(&self, name: &str, http_port: u16) -> Vec<String> {
        [
            "--acme-domain",
            name,
            "--acme-directory",
            &format!("https://127.0.0.1:{}/dir", self.acme_port),
            "--acme-directory-ca",
            &self.ca_file,
            "--acme-contact",
            "ops@mesh.test",
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// An HTTPS client trusting only pebble's issuing root, with `name`
    /// resolved to `addr`.
    async fn client(&self, name: &str, addr: std::net::SocketAddr) -> reqwest::Client {
        let root = pebble_root(self.mgmt_port, &self.ca).await;
        let trusting_pebble = TlsConfig::with_ca_pem(root.as_bytes()).expect("pebble root");
        reqwest::Client::builder()
            .tls_backend_preconfigured(rustls::ClientConfig::clone(&trusting_pebble.rustls()))
            .resolve(name, addr)
            .build()
            .expect("client")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_pebble_is_ordered_served_and_cached() {
    if !have("pebble") || !have("pebble-challtestsrv") {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let mesh_http = free_port();
    let pebble = Pebble::start(dir, mesh_http);
    let data = dir.join("data");
    let flags = pebble.flags("mesh.test", mesh_http);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_binary(&data, &flags).expect("mesh-server starts");
    let issued = server.wait_for_log("ACME certificate issued", Duration::from_secs(60));
    assert!(
        issued.is_some(),
        "no certificate; the log:\n{}",
        server.stop()
    );

    // The server serves it: a client trusting only pebble's root, asking
    // for mesh.test (resolved to the server's address).
    let url = format!("https://mesh.test:{}", server.addr.port());
    let http = pebble.client("mesh.test", server.addr).await;
    let health = http
        .get(format!("{url}/health"))
        .send()
        .await
        .expect("the ACME certificate is served and trusted");
    assert_eq!(health.status(), 200);
    // The key and account are kept, readable by the server's user only.
    for f in ["cert.pem", "key.pem", "account.json"] {
        let meta = std::fs::metadata(data.join("acme").join(f)).expect(f);
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077,
            0,
            "{f}"
        );
    }
    // Plain HTTP on the challenge port is redirected to HTTPS.
    common::install_ring();
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{mesh_http}/api/rooms?x=1"))
        .header("host", "mesh.test")
        .send()
        .await
        .expect("redirect");
    assert_eq!(redirect.status(), 308);
    assert_eq!(
        redirect.headers()["location"],
        format!("https://mesh.test:{}/api/rooms?x=1", server.addr.port()).as_str()
    );
    let log = server.stop();
    assert!(log.contains("redirecting plain HTTP"), "{log}");

    // A restart serves the cached certificate at once, with no new order.
    let server = start_binary(&data, &flags).expect("mesh-server restarts");
    let cached = server.wait_for_log(
        "serving the cached ACME certificate",
        Duration::from_secs(10),
    );
    assert!(cached.is_some(), "{}", server.stop());
    let http = pebble.client("mesh.test", server.addr).await;
    let url = format!("https://mesh.test:{}", server.addr.port());
    assert_eq!(
        http.get(format!("{url}/health"))
            .send()
            .await
            .expect("served")
            .status(),
        200
    );
    let log = server.stop();
    assert!(
        !log.contains("ACME certificate issued"),
        "ordered again:\n{log}"
    );
}

/// Two nodes of a cluster behind one name share one order: node a (the
/// smaller id) orders; pebble's check reaches node b only (its HTTP-01 port
/// is b's), which answers with node a's token, heard over the bus; node b
/// then serves the certificate from the shared cache, without ordering.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_behind_one_name_share_one_order() {
    if !have("pebble") || !have("pebble-challtestsrv") {
        return;
    }
    let Some(nats) = service_url("MESH_TEST_NATS", "NATS") else {
        return;
    };
    let Some(store) = pg_database().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let (http_a, http_b) = (free_port(), free_port());
    let pebble = Pebble::start(dir, http_b);
    // One data folder: the signing keys and the ACME cache are shared.
    let data = dir.join("data");
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let node = |name: &str, http: u16| {
        let mut flags = pebble.flags("mesh.test", http);
        for f in [
            "--store",
            &store,
            "--bus",
            &nats,
            "--bus-prefix",
            &prefix,
            "--node-id",
            name,
            "--cluster-heartbeat-ms",
            "200",
        ] {
            flags.push(f.to_owned());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        start_binary(&data, &flags).expect("a node starts")
    };
    // Node b first: node a, the smaller id, orders once it has heard the
    // others (two heartbeats after it joins), and waits until they serve
    // its answer before pebble checks.
    let b = node("b", http_b);
    let a = node("a", http_a);
    let issued = a.wait_for_log("ACME certificate issued", Duration::from_secs(60));
    assert!(issued.is_some(), "node a ordered nothing:\n{}", a.stop());
    let loaded = b.wait_for_log(
        "serving the cached ACME certificate",
        Duration::from_secs(30),
    );
    assert!(loaded.is_some(), "node b never served it:\n{}", b.stop());
    for node in [&a, &b] {
        let http = pebble.client("mesh.test", node.addr).await;
        let health = http
            .get(format!("https://mesh.test:{}/health", node.addr.port()))
            .send()
            .await
            .expect("the shared certificate is served and trusted");
        assert_eq!(health.status(), 200);
    }
    let log_b = b.stop();
    assert!(
        !log_b.contains("ACME certificate issued"),
        "node b ordered too:\n{log_b}"
    );
    drop(a);
}
