//! The `mesh` binary end to end, on loopback, against the real server
//! (in-process on 127.0.0.1:0): accounts, rooms and messages via the CLI
//! with `--json` parsed; an agent receiving a file and a nested folder;
//! a 200 MiB file whose sender is killed halfway, resumed on the next send;
//! a terminal shared with control (a command's output reaches the viewer)
//! and read-only (input refused).
//!
//! Each user has its own `MESH_CONFIG_DIR`. Long-running commands are read
//! line by line until the event a step waits for; no sleeps. Every wait
//! has a time-out, only as a hang guard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

// The tests' CA (rcgen), shared with the server's tests.
#[path = "../../mesh-server-bin/tests/common/tls.rs"]
#[allow(dead_code, unreachable_pub)]
mod test_ca;

/// The server, stopped when dropped; restartable on the same address.
struct Server {
    url: String,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    dir: tempfile::TempDir,
    /// HTTPS: the server's TLS, and the CA file clients are told to trust.
    tls: Option<(mesh_server_bin::ServerTls, PathBuf)>,
}

async fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server {
        url: String::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        stop: None,
        task: None,
        dir,
        tls: None,
    };
    server.start().await;
    server
}

/// A server on HTTPS with a certificate for `localhost` from a test CA,
/// whose certificate is written to `ca.pem` in the server's folder.
async fn start_https_server() -> Server {
    use mesh_server_bin::tls::{CertStore, ServerTls, files};
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = test_ca::TestCa::new("mesh CLI test CA");
    let leaf = ca.leaf(&["localhost"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("CA file");
    let certs = CertStore::new();
    certs.set(
        files::certified_key(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
            .expect("leaf loads"),
    );
    let mut server = Server {
        url: String::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        stop: None,
        task: None,
        dir,
        tls: Some((ServerTls::new(certs).expect("tls"), ca_file)),
    };
    server.start().await;
    server
}

impl Server {
    async fn start(&mut self) {
        // TCP and, on the same port number, UDP (STUN and the P2P relay),
        // as the real binary binds them.
        let listener = mesh_server_bin::Listeners::bind(self.addr, None)
            .await
            .expect("bind");
        self.addr = listener.tcp.local_addr().expect("addr");
        self.url = match &self.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://localhost:{}", self.addr.port()),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = mesh_server_bin::Config::new(self.dir.path());
        config.tls = self.tls.as_ref().map(|(tls, _)| tls.clone());
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(mesh_server_bin::run(
            listener, config, stopped,
        )));
    }

    /// Stops the server (WebSockets close with 1001) and starts it again
    /// on the same address and data.
    async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops in time (hang guard)")
                .expect("server task")
                .expect("server result");
        }
        self.start().await;
    }
}

/// One user of the CLI: a config folder and a server.
struct User {
    dir: tempfile::TempDir,
    server: String,
    /// `MESH_CA_CERT`, for an HTTPS server.
    ca_cert: Option<PathBuf>,
}

impl User {
    fn new(server: &Server) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            server: server.url.clone(),
            ca_cert: server.tls.as_ref().map(|(_, ca)| ca.clone()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
        cmd.args(args)
            .env("MESH_CONFIG_DIR", self.dir.path())
            .env("MESH_SERVER", &self.server)
            .env_remove("RUST_LOG")
            .env_remove("MESH_CA_CERT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(ca) = &self.ca_cert {
            cmd.env("MESH_CA_CERT", ca);
        }
        cmd
    }

    /// Runs `mesh ARGS` with `stdin`; returns (success, stdout, stderr).
    async fn run_with(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut child = self.command(args).spawn().expect("spawn mesh");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("write stdin");
        drop(input);
        let out = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("mesh {args:?} finished in time (hang guard)"))
            .expect("mesh output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `mesh --json ARGS`, which must succeed; its JSON output.
    async fn json(&self, args: &[&str]) -> Value {
        self.json_with(args, "").await
    }

    async fn json_with(&self, args: &[&str], stdin: &str) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.run_with(&all, stdin).await;
        assert!(ok, "mesh {args:?} failed: {err}{out}");
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("JSON from {args:?}: {e}: {out}"))
    }

    /// Runs `mesh ARGS`, which must fail; its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run_with(args, "").await;
        assert!(!ok, "mesh {args:?} should fail, printed {out}");
        err
    }

    async fn register(&self, name: &str) -> Value {
        self.json_with(
            &["register", name, "--password-stdin"],
            "a long enough password\n",
        )
        .await
    }

    /// Starts a long-running `mesh --json ARGS`.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let mut child = self.command(&all).spawn().expect("spawn mesh");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        Running {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        }
    }
}

/// A long-running `mesh` process whose JSON lines are read as needed.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    /// Reads lines until one whose `event` is `event`; `seen` gets every line.
    async fn until(&mut self, event: &str, seen: &mut Vec<Value>) -> Value {
        let read = async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .expect("read stdout")
                    .unwrap_or_else(|| panic!("mesh exited before {event:?}; saw {seen:?}"));
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("JSON line: {e}: {line}"));
                seen.push(v.clone());
                if v["event"] == event {
                    return v;
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("{event:?} in time (hang guard)"))
    }

    async fn wait(&mut self, event: &str) -> Value {
        self.until(event, &mut Vec::new()).await
    }

    async fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write stdin");
        stdin.flush().await.expect("flush");
    }

    /// Closes stdin and waits for the exit; whether it succeeded.
    async fn finish(mut self) -> bool {
        drop(self.stdin.take());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exited in time (hang guard)")
            .expect("exit status")
            .success()
    }
}

/// alice and bob, both in room `general` (created by alice).
async fn two_users_in_a_room(server: &Server) -> (User, User) {
    let alice = User::new(server);
    let bob = User::new(server);
    alice.register("alice").await;
    bob.register("bob").await;
    alice.json(&["room", "create", "general"]).await;
    bob.json(&["room", "join", "general"]).await;
    (alice, bob)
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_rooms_messages_and_history_via_the_cli() {
    let server = start_server().await;
    let alice = User::new(&server);
    let bob = User::new(&server);

    let err = alice.fails(&["rooms"]).await;
    assert!(err.contains("not logged in"), "{err}");

    let reg = alice.register("alice").await;
    assert_eq!(reg["user"]["username"], "alice");
    let config = alice.dir.path().join("config.json");
    #[cfg(unix)]
    assert_eq!(mode_of(&config), 0o600, "the token file is private");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(&config).expect("config")).expect("config JSON");
    assert!(saved["token"].as_str().is_some_and(|t| !t.is_empty()));

    // A wrong password is refused; the right one logs in again.
    let (ok, _, err) = alice
        .run_with(&["login", "alice", "--password-stdin"], "wrong password\n")
        .await;
    assert!(!ok && err.contains("unauthorized"), "{err}");
    let login = alice
        .json_with(
            &["login", "alice", "--password-stdin"],
            "a long enough password\n",
        )
        .await;
    assert_eq!(login["user"]["username"], "alice");
    assert_eq!(alice.json(&["whoami"]).await["user"]["username"], "alice");

    let room = alice
        .json(&["room", "create", "general", "--topic", "all things"])
        .await;
    let room_id = room["room"]["id"].as_str().expect("room id").to_owned();
    bob.register("bob").await;
    let rooms = bob.json(&["rooms"]).await;
    assert_eq!(rooms["rooms"][0]["name"], "general");
    // ROOM by id works as well as by name.
    bob.json(&["room", "join", &room_id]).await;

    let sent = alice.json(&["send", "general", "hello bob"]).await;
    assert_eq!(sent["message"]["seq"], 1);
    bob.json(&["send", &room_id, "hi alice"]).await;

    let history = bob.json(&["history", "general"]).await;
    let messages: Vec<(String, String)> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["sender"]["username"].as_str().unwrap_or("").to_owned(),
                m["content"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            ("alice".to_owned(), "hello bob".to_owned()),
            ("bob".to_owned(), "hi alice".to_owned())
        ]
    );
    let members = alice.json(&["room", "members", "general"]).await;
    assert_eq!(members["members"].as_array().map(Vec::len), Some(2));

    let err = alice.fails(&["history", "nowhere"]).await;
    assert!(err.contains("no room named \"nowhere\""), "{err}");

    // `mesh chat`: messages sent elsewhere show up live; lines typed are sent.
    let mut chat = bob.spawn(&["chat", "general"]);
    chat.wait("ready").await;
    alice.json(&["send", "general", "are you there?"]).await;
    let live = chat.wait("message").await;
    assert_eq!(live["message"]["content"], "are you there?");
    chat.type_line("yes, in the terminal").await;
    let mine = chat.wait("message").await;
    assert_eq!(mine["message"]["sender"]["username"], "bob");
    assert!(chat.finish().await, "chat leaves cleanly at end of input");
    let history = alice.json(&["history", "general", "--limit", "1"]).await;
    assert_eq!(history["messages"][0]["content"], "yes, in the terminal");
}

/// Deterministic, incompressible-looking bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write(path: PathBuf, body: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, body).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_receives_files_and_nested_folders() {
    let server = start_server().await;
    let (alice, bob) = two_users_in_a_room(&server).await;
    let work = tempfile::tempdir().expect("temp dir");
    let inbox = work.path().join("inbox");

    let err = alice
        .fails(&["send-file", "bob", "Cargo.toml", "--room", "general"])
        .await;
    assert!(err.contains("bob is not online"), "{err}");

    let mut agent = bob.spawn(&["agent", "--receive-dir", inbox.to_str().expect("utf-8")]);
    let ready = agent.wait("ready").await;
    assert!(ready["fingerprint"].as_str().is_some_and(|f| f.len() == 64));
    #[cfg(unix)]
    for f in ["p2p-cert.pem", "p2p-key.pem"] {
        let kept = bob.dir.path().join("identity").join(f);
        assert_eq!(mode_of(&kept), 0o600, "{f} is kept private");
    }

    // A file, a few chunks long, arrives byte-identical.
    let body = bytes(1_500_000, 7);
    let source = work.path().join("report.bin");
    write(source.clone(), &body);
    let sent = alice
        .json(&[
            "send-file",
            "bob",
            source.to_str().expect("utf-8"),
            "--room",
            "general",
        ])
        .await;
    assert_eq!(sent["size"], 1_500_000);
    assert_eq!(sent["to"], "bob");
    assert_eq!(sent["path"], "direct", "one machine: {sent}");
    let connect = sent["connect_seconds"].as_f64().expect("connect_seconds");
    let whole = sent["seconds"].as_f64().expect("seconds");
    assert!(connect > 0.0 && connect < 10.0, "{sent}");
    assert!(whole > 0.0, "{sent}");
    let received = agent.wait("received").await;
    assert_eq!(received["from"], "alice");
    assert_eq!(received["via"], "direct");
    assert_eq!(received["blake3"], sent["blake3"]);
    assert_eq!(
        std::fs::read(inbox.join("report.bin")).expect("received file"),
        body
    );

    // Sending it again is refused (no overwrite), with the agent's reason.
    let err = alice
        .fails(&["send-file", "bob", source.to_str().expect("utf-8")])
        .await;
    assert!(
        err.contains("bob's agent refused") && err.contains("exists"),
        "{err}"
    );

    // A folder with nested paths.
    let tree = work.path().join("project");
    let files = [
        ("README.md", bytes(300, 1)),
        ("src/main.rs", bytes(70_000, 2)),
        ("src/deep/er/mod.rs", bytes(10, 3)),
        ("empty.txt", Vec::new()),
    ];
    for (rel, body) in &files {
        write(tree.join(rel), body);
    }
    let sent = alice
        .json(&["send-folder", "bob", tree.to_str().expect("utf-8")])
        .await;
    assert_eq!(sent["files"], 4);
    let received = agent.wait("received").await;
    assert_eq!(received["kind"], "folder");
    for (rel, body) in &files {
        let got = std::fs::read(inbox.join("project").join(rel)).expect("received file");
        assert_eq!(&got, body, "{rel}");
    }

    // A terminal shared with the agent is shown there (view only).
    let (ok, out, err) = alice
        .run_with(
            &[
                "share-terminal",
                "bob",
                "--",
                "sh",
                "-c",
                "echo shared-$((6*7))",
            ],
            "",
        )
        .await;
    assert!(ok, "{err}{out}");
    let mut seen = Vec::new();
    let exit = agent.until("terminal_exit", &mut seen).await;
    assert_eq!(exit["code"], 0);
    let shown: String = seen.iter().filter_map(|e| e["data"].as_str()).collect();
    assert!(shown.contains("shared-42"), "{seen:?}");

    // A second agent of bob's, announcing an address nobody answers at:
    // "bob" is now ambiguous, and that agent cannot be reached.
    let mut lost = bob.spawn(&["agent", "--announce", "127.0.0.1:9"]);
    let lost_peer = lost.wait("ready").await["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned();
    let err = alice
        .fails(&["send-file", "bob", source.to_str().expect("utf-8")])
        .await;
    assert!(
        err.contains("bob is ambiguous") && err.contains(&lost_peer),
        "{err}"
    );
    let err = alice
        .fails(&[
            "send-file",
            &lost_peer,
            source.to_str().expect("utf-8"),
            "--connect-timeout",
            "1",
        ])
        .await;
    assert!(
        err.contains("could not reach bob's agent at 127.0.0.1:9")
            && err.contains("no direct path worked"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_nobody_reaches_directly_receives_through_the_relay() {
    let server = start_server().await;
    let (alice, bob) = two_users_in_a_room(&server).await;
    let work = tempfile::tempdir().expect("temp dir");
    let inbox = work.path().join("inbox");
    // The agent announces only an address nothing answers at (a local
    // port nothing reads): no direct path can work.
    let mut agent = bob.spawn(&[
        "agent",
        "--receive-dir",
        inbox.to_str().expect("utf-8"),
        "--announce",
        "127.0.0.1:9",
    ]);
    agent.wait("ready").await;
    let body = bytes(3_000_000, 9);
    let source = work.path().join("far.bin");
    write(source.clone(), &body);
    let sent = alice
        .json(&["send-file", "bob", source.to_str().expect("utf-8")])
        .await;
    assert_eq!(sent["path"], "relay", "{sent}");
    let connect = sent["connect_seconds"].as_f64().expect("connect_seconds");
    assert!(connect > 0.0 && connect < 10.0, "{sent}");
    let received = agent.wait("received").await;
    assert_eq!(received["via"], "relay");
    assert_eq!(
        std::fs::read(inbox.join("far.bin")).expect("received file"),
        body
    );
    let (ok, out, err) = alice
        .run_with(&["send-file", "bob", source.to_str().expect("utf-8")], "")
        .await;
    assert!(!ok, "refused: the file exists; {out}");
    assert!(err.contains("exists"), "{err}");

    // A folder and a terminal through the relay too.
    let tree = work.path().join("tree");
    write(tree.join("a/b.txt"), b"relayed");
    let sent = alice
        .json(&["send-folder", "bob", tree.to_str().expect("utf-8")])
        .await;
    assert_eq!(sent["path"], "relay", "{sent}");
    assert_eq!(agent.wait("received").await["kind"], "folder");
    assert_eq!(
        std::fs::read(inbox.join("tree/a/b.txt")).expect("received"),
        b"relayed"
    );

    // Without the relay there is no path: a clear error, quickly.
    let err = alice
        .fails(&[
            "send-file",
            "bob",
            source.to_str().expect("utf-8"),
            "--name",
            "other.bin",
            "--no-relay",
            "--connect-timeout",
            "1",
        ])
        .await;
    assert!(
        err.contains("could not reach bob's agent at 127.0.0.1:9") && err.contains("--no-relay"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_listens_again_after_the_server_restarts() {
    let mut server = start_server().await;
    let (alice, bob) = two_users_in_a_room(&server).await;
    let work = tempfile::tempdir().expect("temp dir");
    let inbox = work.path().join("inbox");
    let mut agent = bob.spawn(&["agent", "--receive-dir", inbox.to_str().expect("utf-8")]);
    let before = agent.wait("ready").await["peer_id"].clone();

    // The server restarts: the agent reconnects as a new peer and listens
    // on its announced port again.
    server.restart().await;
    agent.wait("disconnected").await;
    let after = agent.wait("reconnected").await["peer_id"].clone();
    assert_ne!(before, after, "a new connection is a new peer");

    let source = work.path().join("after-restart.txt");
    write(source.clone(), b"still here");
    let sent = alice
        .json(&["send-file", "bob", source.to_str().expect("utf-8")])
        .await;
    assert_eq!(sent["size"], 10);
    agent.wait("received").await;
    assert_eq!(
        std::fs::read(inbox.join("after-restart.txt")).expect("received file"),
        b"still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_terminal_obeys_the_sharer() {
    let server = start_server().await;
    let (alice, bob) = two_users_in_a_room(&server).await;

    // With control: bob's command runs in alice's shell, he sees the output.
    let mut viewer = bob.spawn(&["join-terminal"]);
    viewer.wait("ready").await;
    let mut sharer = alice.spawn(&["share-terminal", "bob", "--allow-control", "--", "sh"]);
    let sharing = sharer.wait("sharing").await;
    assert_eq!(sharing["allow_control"], true);
    viewer.wait("terminal_started").await;
    viewer.type_line("echo mesh-$((40+2))").await;
    let mut output = String::new();
    while !output.contains("mesh-42") {
        let mut seen = Vec::new();
        let v = viewer.until("terminal_output", &mut seen).await;
        assert!(
            seen.iter().all(|e| e["event"] != "input_refused"),
            "{seen:?}"
        );
        output.push_str(v["data"].as_str().unwrap_or(""));
    }
    viewer.type_line("exit").await;
    let exit = viewer.wait("terminal_exit").await;
    assert_eq!(exit["code"], 0);
    assert!(viewer.finish().await);
    assert_eq!(sharer.wait("ended").await["code"], 0);
    assert!(sharer.finish().await);

    // Read-only (the default): input is refused and never reaches the shell.
    let mut viewer = bob.spawn(&["join-terminal"]);
    viewer.wait("ready").await;
    let mut sharer = alice.spawn(&["share-terminal", "bob", "--", "sh"]);
    assert_eq!(sharer.wait("sharing").await["allow_control"], false);
    viewer.wait("terminal_started").await;
    viewer.type_line("echo mesh-$((40+2))").await;
    let mut seen = Vec::new();
    viewer.until("input_refused", &mut seen).await;
    assert!(
        seen.iter()
            .all(|e| !e["data"].as_str().unwrap_or("").contains("mesh-42")),
        "{seen:?}"
    );
    // The viewer leaves (end of input): the share ends, the shell is stopped.
    assert!(viewer.finish().await);
    assert!(sharer.wait("ended").await["code"].is_null());
    assert!(sharer.finish().await);
}

/// 200 MiB of deterministic content: a pseudo-random MiB, each copy
/// stamped with its index so no two blocks are alike.
fn big_file(path: &Path, mib: usize) {
    use std::io::Write as _;
    let block = bytes(1 << 20, 11);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for i in 0..mib {
        f.write_all(&(i as u64).to_le_bytes()).expect("write");
        f.write_all(&block[8..]).expect("write");
    }
    f.flush().expect("flush");
}

fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read as _;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open a"),
        std::fs::File::open(b).expect("open b"),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).expect("read a");
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).expect("read b");
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if na == 0 {
            return fb.read(&mut bb).expect("read b") == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_arrives_and_a_killed_transfer_resumes() {
    const MIB: usize = 200;
    let server = start_server().await;
    let (alice, bob) = two_users_in_a_room(&server).await;
    let work = tempfile::tempdir().expect("temp dir");
    let inbox = work.path().join("inbox");
    let mut agent = bob.spawn(&["agent", "--receive-dir", inbox.to_str().expect("utf-8")]);
    agent.wait("ready").await;

    let source = work.path().join("big.bin");
    big_file(&source, MIB);
    let src = source.to_str().expect("utf-8");

    // The sender is killed (SIGKILL) once the receiver has recorded a
    // resumable part (it records one every 16 MiB, and on a clean error).
    let mut sender = alice.spawn(&["send-file", "bob", src, "--room", "general"]);
    let part = inbox.join(".big.bin.mesh-part");
    let grown = async {
        loop {
            let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if len >= 40 << 20 {
                return len;
            }
            // Polling a file the agent writes: the only signal there is.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(WAIT, grown)
        .await
        .expect("the part file grows (hang guard)");
    sender.child.kill().await.expect("kill the sender");
    assert!(
        !inbox.join("big.bin").exists(),
        "no file under its name yet"
    );

    // Sending again resumes where the verified part ends.
    let sent = alice
        .json(&["send-file", "bob", src, "--room", "general"])
        .await;
    let size = (MIB as u64) << 20;
    assert_eq!(sent["size"], size);
    let resumed = sent["resumed_from"].as_u64().expect("resumed_from");
    assert!(
        resumed >= 16 << 20 && resumed < size,
        "resumed from {resumed}: {sent}"
    );
    assert_eq!(sent["transferred"], size - resumed);
    let received = agent.wait("received").await;
    assert_eq!(received["blake3"], sent["blake3"]);
    assert!(
        same_content(&source, &inbox.join("big.bin")),
        "byte-identical"
    );
    assert!(!part.exists(), "the part file is gone once verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_and_wss_with_a_private_ca_the_cli_chats_and_sends_a_file() {
    let server = start_https_server().await;
    assert!(server.url.starts_with("https://"));

    // Without the CA: refused, and told what to do.
    let mut stranger = User::new(&server);
    stranger.ca_cert = None;
    let (ok, _, err) = stranger
        .run_with(
            &["login", "eve", "--password-stdin"],
            "a long enough password\n",
        )
        .await;
    assert!(!ok);
    assert!(
        err.contains("not signed by a CA this client trusts") && err.contains("--ca-cert"),
        "{err}"
    );
    // With a certificate from another CA: the same.
    let other = test_ca::TestCa::new("another CA");
    let other_file = stranger.dir.path().join("other.pem");
    std::fs::write(&other_file, other.pem()).expect("write");
    let (ok, _, err) = stranger
        .run_with(
            &[
                "--ca-cert",
                other_file.to_str().expect("utf-8"),
                "register",
                "eve",
                "--password-stdin",
            ],
            "a long enough password\n",
        )
        .await;
    assert!(
        !ok && err.contains("not signed by a CA this client trusts"),
        "{err}"
    );

    // With --ca-cert (MESH_CA_CERT): register, chat (REST and the WebSocket).
    let (alice, bob) = two_users_in_a_room(&server).await;
    let mut listener = bob.spawn(&["chat", "general"]);
    listener.wait("ready").await;
    alice.json(&["send", "general", "hello over https"]).await;
    let got = listener.wait("message").await;
    assert_eq!(got["message"]["content"], "hello over https");
    drop(listener);

    // The CA is saved with the login: later commands need no flag.
    let mut later = User::new(&server);
    later.dir = alice.dir;
    later.ca_cert = None;
    let history = later.json(&["history", "general"]).await;
    assert!(
        history.to_string().contains("hello over https"),
        "{history}"
    );

    // A file to bob's agent: the server part over wss, the bytes over QUIC.
    let work = tempfile::tempdir().expect("temp dir");
    let inbox = work.path().join("inbox");
    let mut agent = bob.spawn(&["agent", "--receive-dir", inbox.to_str().expect("utf-8")]);
    agent.wait("ready").await;
    let body = bytes(200_000, 11);
    let source = work.path().join("notes.bin");
    write(source.clone(), &body);
    let sent = later
        .json(&[
            "send-file",
            "bob",
            source.to_str().expect("utf-8"),
            "--room",
            "general",
        ])
        .await;
    assert_eq!(sent["size"], 200_000);
    let received = agent.wait("received").await;
    assert_eq!(received["blake3"], sent["blake3"]);
    assert_eq!(
        std::fs::read(inbox.join("notes.bin")).expect("received"),
        body
    );
}
