//! [`PgStore`] against the storage conformance suite (the model test with
//! its restarts included), and appends from two processes at once.
//!
//! The database is the one `scripts/services.sh` starts
//! (`MESH_TEST_POSTGRES`). Every test works in a schema of its own, named
//! after the test's temporary directory, so reopening the same directory is
//! a restart against the same data. Without `MESH_TEST_POSTGRES` the tests
//! return at once, except under `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_core::protocol::RoomId;
use mesh_core::storage::conformance as c;
use mesh_core::storage::postgres::tokio_postgres::{self, NoTls};
use mesh_core::storage::postgres::{PgOptions, PgStore};

const URL_VAR: &str = "MESH_TEST_POSTGRES";

/// The test database's URL, or `None` (outside CI) when there is none.
fn pg_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{URL_VAR} is not set: CI must run the PostgreSQL tests (scripts/test.sh starts a server)"
            );
            eprintln!(
                "skipped: {URL_VAR} is not set (`source scripts/services.sh; start_services`)"
            );
            None
        }
    }
}

fn pg_ready() -> bool {
    pg_url().is_some()
}

/// The schema a test directory's store lives in.
fn schema_for(dir: &Path) -> String {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("x");
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("t_{safe}").to_ascii_lowercase()
}

async fn open_in(schema: &str) -> PgStore {
    let url = pg_url().expect("the test database");
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("connect to the test database");
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .expect("create the test's schema");
    drop(client);
    let _ = connection.await;
    let mut config: tokio_postgres::Config = url.parse().expect("the test database's URL");
    config.options(format!("-c search_path={schema}"));
    let options = PgOptions {
        max_connections: 4,
        ..PgOptions::default()
    };
    PgStore::from_config(config, options)
        .await
        .expect("open the PostgreSQL store")
}

async fn open(dir: PathBuf) -> PgStore {
    open_in(&schema_for(&dir)).await
}

mesh_core::store_conformance_tests!(
    postgres,
    restart = |path: PathBuf| open(path),
    when = pg_ready()
);

const CHILD_SCHEMA: &str = "MESH_TEST_CHILD_SCHEMA";
const CHILD_ROOM: &str = "MESH_TEST_CHILD_ROOM";
const CHILD_TASKS: &str = "MESH_TEST_CHILD_TASKS";

/// Two processes, each with its own pool, append to one room at once (half
/// of the suite's appenders each, with retries): seq stays 1..=N without a
/// gap or a duplicate, and every retry finds its original.
#[test]
fn concurrent_appends_from_two_processes() {
    if !pg_ready() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = c::TempDir::new();
    let schema = schema_for(dir.path());
    let room = rt.block_on(async {
        let store = open_in(&schema).await;
        c::concurrent_setup(&store).await
    });
    let exe = std::env::current_exe().expect("this test binary");
    let half = c::CONCURRENT_TASKS / 2;
    let children: Vec<_> = [0..half, half..c::CONCURRENT_TASKS]
        .into_iter()
        .map(|tasks| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "appender_process",
                    "--include-ignored",
                    "--nocapture",
                ])
                .env(CHILD_SCHEMA, &schema)
                .env(CHILD_ROOM, room.to_string())
                .env(CHILD_TASKS, format!("{}-{}", tasks.start, tasks.end))
                .spawn()
                .expect("start an appender process")
        })
        .collect();
    for mut child in children {
        let status = child.wait().expect("wait for an appender process");
        assert!(status.success(), "an appender process failed: {status}");
    }
    rt.block_on(async {
        let store = open_in(&schema).await;
        c::concurrent_check(&store, room).await;
    });
}

/// The child of [`concurrent_appends_from_two_processes`]: runs the tasks
/// it is given, concurrently.
#[test]
#[ignore = "a child process of concurrent_appends_from_two_processes"]
fn appender_process() {
    let (Ok(schema), Ok(room), Ok(tasks)) = (
        std::env::var(CHILD_SCHEMA),
        std::env::var(CHILD_ROOM),
        std::env::var(CHILD_TASKS),
    ) else {
        return;
    };
    let room: RoomId = room.parse().expect("room id");
    let (from, to) = tasks.split_once('-').expect("tasks as FROM-TO");
    let (from, to): (usize, usize) = (
        from.parse().expect("first task"),
        to.parse().expect("end task"),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = std::sync::Arc::new(open_in(&schema).await);
        let tasks: Vec<_> = (from..to)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move { c::concurrent_task(&*store, room, task).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("an appending task panicked");
        }
    });
}
