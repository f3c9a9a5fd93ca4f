//! The config folder: `config.json` (server, token, who is logged in; mode
//! 0600) and `identity/` (the agent's P2P certificate and key, mode 0600).
//!
//! The folder is `--config-dir`, else `MESH_CONFIG_DIR`, else the user's
//! config folder (`~/.config/mesh` on Linux).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use mesh_core::client::{Client, EventStream, HttpApi, TlsConfig};
use mesh_core::protocol::P2pInfo;
use serde::{Deserialize, Serialize};

/// The server used when neither `--server`, `MESH_SERVER` nor a login says.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";

const CONFIG_FILE: &str = "config.json";

/// What `config.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) username: Option<String>,
    /// The `--ca-cert` the login was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_cert: Option<PathBuf>,
}

/// Everything a command needs: where things are, which server, the output
/// mode and the saved login.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) dir: PathBuf,
    pub(crate) server: String,
    /// `--ca-cert`, else the saved one.
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) saved: Saved,
}

impl Ctx {
    /// Reads the config folder (a missing `config.json` is an empty one).
    pub(crate) fn load(
        dir: Option<PathBuf>,
        server: Option<String>,
        ca_cert: Option<PathBuf>,
        json: bool,
    ) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(d) => d,
            None => dirs::config_dir()
                .map(|d| d.join("mesh"))
                .ok_or_else(|| anyhow!("no config folder: set MESH_CONFIG_DIR"))?,
        };
        let path = dir.join(CONFIG_FILE);
        let saved = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // A saved CA belongs to the saved server only.
        let ca_cert = match &server {
            Some(s) if Some(s) != saved.server.as_ref() => ca_cert,
            _ => ca_cert.or_else(|| saved.ca_cert.clone()),
        };
        let server = server
            .or_else(|| saved.server.clone())
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        Ok(Self {
            dir,
            server: server.trim_end_matches('/').to_owned(),
            ca_cert,
            json,
            saved,
        })
    }

    /// The saved token, or an error telling how to get one.
    pub(crate) fn token(&self) -> anyhow::Result<&str> {
        match &self.saved.token {
            Some(t) => Ok(t),
            None => bail!("not logged in: run `mesh login USERNAME` (or `mesh register`) first"),
        }
    }

    /// What to trust over TLS: `--ca-cert` alone, else the system's roots.
    pub(crate) fn tls(&self) -> anyhow::Result<TlsConfig> {
        Ok(match &self.ca_cert {
            Some(file) => TlsConfig::with_ca_file(file)?,
            None => TlsConfig::default_for(&self.server)?,
        })
    }

    /// The HTTP API without a token.
    pub(crate) fn anonymous_api(&self) -> anyhow::Result<HttpApi> {
        Ok(HttpApi::with_tls(&self.server, self.tls()?)?)
    }

    /// The HTTP API with the saved token.
    pub(crate) fn api(&self) -> anyhow::Result<HttpApi> {
        Ok(self.anonymous_api()?.with_token(self.token()?))
    }

    /// Opens the WebSocket (announcing `p2p` when this is an agent) and
    /// takes its event stream.
    pub(crate) async fn connect(
        &self,
        device: &str,
        p2p: Option<P2pInfo>,
    ) -> anyhow::Result<(Client, EventStream)> {
        let mut builder = Client::builder()
            .server(&self.server)
            .tls(self.tls()?)
            .token(self.token()?)
            .device_name(device);
        if let Some(info) = p2p {
            builder = builder.p2p(info);
        }
        let client = builder
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.server))?;
        let events = client
            .events()
            .ok_or_else(|| anyhow!("the event stream was already taken"))?;
        Ok((client, events))
    }

    /// Where the agent's certificate and key live.
    pub(crate) fn identity_dir(&self) -> PathBuf {
        self.dir.join("identity")
    }

    /// Saves `saved` as `config.json`, readable by the user only.
    pub(crate) fn save(&self, saved: &Saved) -> anyhow::Result<()> {
        create_private_dir(&self.dir)?;
        let path = self.dir.join(CONFIG_FILE);
        let tmp = self.dir.join(format!("{CONFIG_FILE}.tmp"));
        let body = serde_json::to_vec_pretty(saved)?;
        write_private(&tmp, &body).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path)?;
    // An existing file keeps its mode on open: force 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(body)?;
    file.sync_all()
}
