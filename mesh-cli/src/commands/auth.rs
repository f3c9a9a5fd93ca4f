//! `mesh register`, `mesh login`, `mesh logout`, `mesh whoami`.
//!
//! Passwords are read without echo from the terminal, or as one line from
//! stdin with `--password-stdin` (for scripts). The token goes to the
//! config folder's `config.json` (mode 0600), with the server it is for.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, bail};
use clap::Args;
use mesh_core::protocol::http::{AuthResponse, LoginRequest, RegisterRequest};
use serde_json::json;

use crate::config::{Ctx, Saved};
use crate::output::emit;

/// `mesh register`.
#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// The username to create.
    username: String,
    /// The name others see (default: the username).
    #[arg(long)]
    display_name: Option<String>,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// Names this device in your device list.
    #[arg(long, default_value = "mesh-cli")]
    device_name: String,
}

/// `mesh login`.
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// Your username.
    username: String,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// Names this device in your device list.
    #[arg(long, default_value = "mesh-cli")]
    device_name: String,
}

fn read_password(from_stdin: bool, confirm: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("stdin is not a terminal: pass --password-stdin to read the password from it");
        }
        let p = rpassword::prompt_password("Password: ").context("reading the password")?;
        if confirm {
            let again =
                rpassword::prompt_password("Password again: ").context("reading the password")?;
            if again != p {
                bail!("the passwords differ");
            }
        }
        p
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

fn save_login(ctx: &Ctx, auth: &AuthResponse, verb: &str) -> anyhow::Result<()> {
    ctx.save(&Saved {
        server: Some(ctx.server.clone()),
        token: Some(auth.token.clone()),
        username: Some(auth.user.username.clone()),
        // Absolute, so the login works from any folder.
        ca_cert: ctx
            .ca_cert
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
    })?;
    emit(
        ctx,
        json!({"user": auth.user, "server": ctx.server, "expires_at": auth.expires_at}),
        || format!("{verb} as {} on {}", auth.user.username, ctx.server),
    );
    Ok(())
}

/// Creates the account, then saves the login.
pub(crate) async fn register(ctx: &Ctx, args: RegisterArgs) -> anyhow::Result<()> {
    let password = read_password(args.password_stdin, true)?;
    let auth = ctx
        .anonymous_api()?
        .register(&RegisterRequest {
            username: args.username,
            password,
            display_name: args.display_name,
            device_name: Some(args.device_name),
        })
        .await
        .with_context(|| format!("registering on {}", ctx.server))?;
    save_login(ctx, &auth, "registered and logged in")
}

/// Logs in and saves the token.
pub(crate) async fn login(ctx: &Ctx, args: LoginArgs) -> anyhow::Result<()> {
    let password = read_password(args.password_stdin, false)?;
    let auth = ctx
        .anonymous_api()?
        .login(&LoginRequest {
            username: args.username,
            password,
            device_name: Some(args.device_name),
        })
        .await
        .with_context(|| format!("logging in to {}", ctx.server))?;
    save_login(ctx, &auth, "logged in")
}

/// Forgets the token (the server keeps the device until it is revoked).
pub(crate) fn logout(ctx: &Ctx) -> anyhow::Result<()> {
    let mut saved = ctx.saved.clone();
    saved.token = None;
    ctx.save(&saved)?;
    emit(ctx, json!({"logged_out": true}), || "logged out".to_owned());
    Ok(())
}

/// Asks the server who the saved token belongs to.
pub(crate) async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let user = ctx.api()?.me().await.context("asking the server")?;
    emit(ctx, json!({"user": user, "server": ctx.server}), || {
        format!(
            "{} ({}) on {}",
            user.username, user.display_name, ctx.server
        )
    });
    Ok(())
}
