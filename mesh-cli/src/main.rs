//! `mesh`: the terminal client and desktop agent of mesh.
//!
//! Chat from a terminal (`mesh chat`, `mesh send`, `mesh history`), manage
//! rooms, and move files, folders and terminals directly between two
//! machines: `mesh agent` stays online and accepts P2P sessions, while
//! `mesh send-file`, `mesh send-folder` and `mesh share-terminal` open them.
//! The server only authorises a session; the bytes go over QUIC between the
//! two agents (see `mesh_core::p2p`).
//!
//! Every command has `--help`; `--json` prints machine-readable output (one
//! JSON object per line for the long-running commands).

mod commands;
mod config;
mod output;
mod p2p;
mod resolve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Ctx;

/// The mesh command-line client and desktop agent.
#[derive(Debug, Parser)]
#[command(name = "mesh", version, about, long_about = None)]
struct Cli {
    /// The mesh server (default: the one you logged in to, else http://127.0.0.1:8000).
    #[arg(long, global = true, env = "MESH_SERVER")]
    server: Option<String>,
    /// Trust only this CA (a PEM file) for an https:// server, e.g. a private
    /// CA; saved with the login (default: the system's root certificates).
    #[arg(long, global = true, env = "MESH_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Print machine-readable JSON instead of text (no progress bars).
    #[arg(long, global = true)]
    json: bool,
    /// Where the login token and the agent's certificate are kept
    /// (default: the user's config folder, e.g. ~/.config/mesh).
    #[arg(long, global = true, env = "MESH_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account and log in (the token is saved in the config folder).
    Register(commands::auth::RegisterArgs),
    /// Log in (the token is saved in the config folder, mode 0600).
    Login(commands::auth::LoginArgs),
    /// Forget the saved token.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// List the rooms you can see.
    Rooms,
    /// Create, join or inspect a room.
    #[command(subcommand)]
    Room(commands::rooms::RoomCommand),
    /// Print a room's recent messages.
    History(commands::rooms::HistoryArgs),
    /// Send one message to a room (for scripts).
    Send(commands::chat::SendArgs),
    /// Chat in a room interactively: lines you type are sent; messages,
    /// presence and typing are shown as they happen.
    Chat(commands::chat::ChatArgs),
    /// Stay online and accept P2P sessions: files and folders into
    /// --receive-dir, terminals shared with you are shown.
    Agent(commands::agent::AgentArgs),
    /// Send a file to a peer's agent.
    SendFile(commands::transfer::SendFileArgs),
    /// Send a folder (with its subfolders) to a peer's agent.
    SendFolder(commands::transfer::SendFolderArgs),
    /// Share a terminal (a program on a PTY) with a peer; read-only unless
    /// you allow control.
    ShareTerminal(commands::terminal::ShareArgs),
    /// Wait for a peer to share a terminal with you and use it (lines you
    /// type are sent when the sharer allowed control).
    JoinTerminal(commands::terminal::JoinArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"error": format!("{e:#}")}));
            }
            eprintln!("mesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx::load(cli.config_dir, cli.server, cli.ca_cert, cli.json)?;
    use commands::*;
    match cli.command {
        Command::Register(a) => auth::register(&ctx, a).await,
        Command::Login(a) => auth::login(&ctx, a).await,
        Command::Logout => auth::logout(&ctx),
        Command::Whoami => auth::whoami(&ctx).await,
        Command::Rooms => rooms::list(&ctx).await,
        Command::Room(c) => rooms::room(&ctx, c).await,
        Command::History(a) => rooms::history(&ctx, a).await,
        Command::Send(a) => chat::send(&ctx, a).await,
        Command::Chat(a) => chat::chat(&ctx, a).await,
        Command::Agent(a) => agent::run(&ctx, a).await,
        Command::SendFile(a) => transfer::send_file(&ctx, a).await,
        Command::SendFolder(a) => transfer::send_folder(&ctx, a).await,
        Command::ShareTerminal(a) => terminal::share(&ctx, a).await,
        Command::JoinTerminal(a) => terminal::join(&ctx, a).await,
    }
}
