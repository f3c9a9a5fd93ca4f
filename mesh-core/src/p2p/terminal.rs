//! Terminal sessions: the sharer runs a real PTY, the viewer sees its
//! output and, only if the sharer allowed control, types into it.
//!
//! Frames: `TERM_OUTPUT` (sharer to viewer), `TERM_INPUT` and `TERM_RESIZE`
//! (viewer to sharer), `TERM_EXIT` (sharer to viewer, last). A read-only
//! share answers every `TERM_INPUT` or `TERM_RESIZE` with a `P2P_ERROR`
//! [`P2pErrorCode::ReadOnly`] and goes on; the input never reaches the PTY.
//!
//! Consent is explicit: [`share`](super::OutgoingSession::share_terminal)
//! takes a [`TerminalPolicy`], which has no default.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use portable_pty::{ChildKiller, CommandBuilder, MasterPty, PtySize, native_pty_system};
use tokio::sync::mpsc;

use super::file::{Wire, unexpected};
use super::frame::{self, Frame};
use super::{P2pError, P2pErrorCode};

/// What the viewer of a shared terminal may do. There is deliberately no
/// `Default`: the sharer chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalPolicy {
    allow_control: bool,
}

impl TerminalPolicy {
    /// The viewer sees output only; input and resizes are refused.
    pub fn read_only() -> Self {
        Self {
            allow_control: false,
        }
    }

    /// The viewer may type into the terminal and resize it.
    pub fn allow_control() -> Self {
        Self {
            allow_control: true,
        }
    }

    /// Whether the viewer may type and resize.
    pub fn allows_control(&self) -> bool {
        self.allow_control
    }
}

/// The program a terminal share runs, built like a command:
/// `TerminalCommand::new("sh").arg("-c").arg("echo hi").size(80, 24)`.
#[derive(Clone, Debug)]
pub struct TerminalCommand {
    program: OsString,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    cols: u16,
    rows: u16,
}

impl TerminalCommand {
    /// Runs `program` (looked up in `PATH`), 80x24.
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            cols: 80,
            rows: 24,
        }
    }

    /// The user's shell: `$SHELL`, or `/bin/sh`.
    pub fn shell() -> Self {
        Self::new(std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into()))
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs in `dir`.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The initial window size.
    pub fn size(mut self, cols: u16, rows: u16) -> Self {
        self.cols = cols;
        self.rows = rows;
        self
    }
}

fn term_err(e: impl std::fmt::Display) -> P2pError {
    P2pError::Terminal(e.to_string())
}

/// Terminal output goes in frames of at most this many bytes.
const OUTPUT_FRAME: usize = 64 * 1024;

/// How long output may keep flowing after the process exited (children it
/// left behind may hold the PTY open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What the sharer does with a frame from the viewer.
#[derive(Debug, PartialEq, Eq)]
enum ViewerAsks {
    /// Type these bytes into the PTY.
    Input(Bytes),
    /// Resize the PTY.
    Resize { cols: u16, rows: u16 },
    /// Refuse (a read-only share): answer with this frame and go on.
    Refuse(Frame),
}

/// The viewer's frame under `policy`; anything but input or a resize is a
/// protocol error that ends the share.
fn viewer_asks(frame: Frame, policy: TerminalPolicy) -> Result<ViewerAsks, P2pError> {
    let read_only = || {
        ViewerAsks::Refuse(Frame::error(
            P2pErrorCode::ReadOnly,
            "this terminal is shared read-only",
        ))
    };
    match frame {
        Frame::TermInput(_) | Frame::TermResize { .. } if !policy.allow_control => Ok(read_only()),
        Frame::TermInput(data) => Ok(ViewerAsks::Input(data)),
        Frame::TermResize { cols, rows } => Ok(ViewerAsks::Resize { cols, rows }),
        other => Err(unexpected(&other, "TERM_INPUT or TERM_RESIZE")),
    }
}

/// A program running on a PTY, and the threads that carry its bytes.
struct Pty {
    master: Box<dyn MasterPty + Send>,
    /// What the program writes, read by a thread of its own (PTY reads block).
    output: mpsc::Receiver<Vec<u8>>,
    /// What the viewer types, written by a thread of its own; `None` for a
    /// read-only share.
    input: Option<std::sync::mpsc::Sender<Bytes>>,
    killer: Box<dyn ChildKiller + Send + Sync>,
    exit: tokio::task::JoinHandle<std::io::Result<portable_pty::ExitStatus>>,
}

/// Starts `cmd` on a new PTY. Spawning the program may fail
/// ([`P2pError::Terminal`]); the caller tells the viewer.
fn spawn_pty(cmd: &TerminalCommand, policy: TerminalPolicy) -> Result<Pty, P2pError> {
    let size = PtySize {
        rows: cmd.rows,
        cols: cmd.cols,
        pixel_width: 0,
        pixel_height: 0,
    };
    let pair = native_pty_system().openpty(size).map_err(term_err)?;
    let mut builder = CommandBuilder::new(&cmd.program);
    builder.args(&cmd.args);
    if let Some(dir) = &cmd.cwd {
        builder.cwd(dir);
    }
    for (k, v) in &cmd.env {
        builder.env(k, v);
    }
    let spawned = pair.slave.spawn_command(builder);
    // Our copy of the slave side must go, or the PTY never reports EOF.
    drop(pair.slave);
    let mut child = spawned.map_err(term_err)?;
    let killer = child.clone_killer();
    let master = pair.master;
    let mut reader = master.try_clone_reader().map_err(term_err)?;
    let (out_tx, output) = mpsc::channel::<Vec<u8>>(32);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        // EIO once the child side is closed: the end, as EOF.
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let input = if policy.allow_control {
        let mut writer = master.take_writer().map_err(term_err)?;
        let (in_tx, in_rx) = std::sync::mpsc::channel::<Bytes>();
        std::thread::spawn(move || {
            while let Ok(data) = in_rx.recv() {
                if writer
                    .write_all(&data)
                    .and_then(|_| writer.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
        Some(in_tx)
    } else {
        None
    };
    let exit = tokio::task::spawn_blocking(move || child.wait());
    Ok(Pty {
        master,
        output,
        input,
        killer,
        exit,
    })
}

/// Reads the viewer's frames on a task of their own, so that the select
/// of [`share`] never cancels a half-read frame. The channel ends after
/// the first error (the viewer's `P2P_ERROR` or the stream's end).
fn spawn_frame_reader(
    mut r: quinn::RecvStream,
) -> (
    mpsc::Receiver<Result<Frame, P2pError>>,
    tokio::task::JoinHandle<()>,
) {
    let (frames_tx, frames_rx) = mpsc::channel::<Result<Frame, P2pError>>(16);
    let task = tokio::spawn(async move {
        loop {
            let next = match frame::read_frame(&mut r).await {
                Ok(Some(Frame::Error(e))) => Err(P2pError::Remote {
                    code: e.code,
                    message: e.message,
                }),
                Ok(Some(f)) => Ok(f),
                Ok(None) => Err(P2pError::Connection("the viewer ended the stream".into())),
                Err(e) => Err(e.into()),
            };
            let stop = next.is_err();
            if frames_tx.send(next).await.is_err() || stop {
                break;
            }
        }
    });
    (frames_rx, task)
}

/// Runs `cmd` on a PTY and shares it over `wire` until it exits (returns
/// its exit code) or the viewer leaves (kills it, returns `None`).
pub(crate) async fn share(
    wire: Wire<quinn::RecvStream, quinn::SendStream>,
    cmd: TerminalCommand,
    policy: TerminalPolicy,
) -> Result<Option<u32>, P2pError> {
    let Wire { r, mut w } = wire;
    let mut pty = match spawn_pty(&cmd, policy) {
        Ok(pty) => pty,
        Err(err) => {
            let f = Frame::error(P2pErrorCode::Terminal, err.to_string());
            let _ = frame::write_frame(&mut w, &f).await;
            return Err(err);
        }
    };
    let (mut frames, reader_task) = spawn_frame_reader(r);
    let mut exit_code: Option<Option<u32>> = None;
    let outcome = relay_until_done(&mut w, &mut pty, &mut frames, policy, &mut exit_code).await;
    reader_task.abort();
    match outcome {
        Ok(()) => {
            let code = exit_code.flatten();
            frame::write_frame(&mut w, &Frame::TermExit { code }).await?;
            let _ = w.finish();
            Ok(code)
        }
        Err(e) => {
            if exit_code.is_none() {
                let _ = pty.killer.kill();
                let _ = (&mut pty.exit).await;
            }
            match e {
                // The viewer left (or the connection died): not our failure.
                P2pError::Connection(_) => Ok(None),
                e => Err(e),
            }
        }
    }
}

/// Carries output to the viewer and the viewer's input and resizes to the
/// PTY until the program exited and its output is drained (`Ok`), or the
/// viewer leaves or breaks the protocol (`Err`). `exit_code` is set once
/// the program exited.
async fn relay_until_done(
    w: &mut quinn::SendStream,
    pty: &mut Pty,
    frames: &mut mpsc::Receiver<Result<Frame, P2pError>>,
    policy: TerminalPolicy,
    exit_code: &mut Option<Option<u32>>,
) -> Result<(), P2pError> {
    let mut output_open = true;
    let drain_deadline = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(drain_deadline);
    while output_open || exit_code.is_none() {
        tokio::select! {
            chunk = pty.output.recv(), if output_open => match chunk {
                Some(data) => {
                    for piece in data.chunks(OUTPUT_FRAME) {
                        let f = Frame::TermOutput(Bytes::copy_from_slice(piece));
                        frame::write_frame(w, &f).await?;
                    }
                }
                None => output_open = false,
            },
            status = &mut pty.exit, if exit_code.is_none() => {
                *exit_code = Some(match status {
                    Ok(Ok(s)) => Some(s.exit_code()),
                    _ => None,
                });
                drain_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            },
            () = &mut drain_deadline, if exit_code.is_some() => output_open = false,
            frame = frames.recv() => {
                let Some(Ok(frame)) = frame else {
                    // The viewer left (or the connection died): stop sharing.
                    return Err(P2pError::Connection("the viewer left".into()));
                };
                match viewer_asks(frame, policy) {
                    Ok(ViewerAsks::Input(data)) => {
                        let sent = pty.input.as_ref().map(|tx| tx.send(data));
                        if let Some(Err(_)) = sent {
                            tracing::debug!("terminal input after the PTY closed");
                        }
                    }
                    Ok(ViewerAsks::Resize { cols, rows }) => {
                        let size = PtySize { rows, cols, pixel_width: 0, pixel_height: 0 };
                        if let Err(e) = pty.master.resize(size) {
                            tracing::debug!(error = %e, "terminal resize failed");
                        }
                    }
                    Ok(ViewerAsks::Refuse(f)) => frame::write_frame(w, &f).await?,
                    Err(err) => {
                        let f = Frame::error(P2pErrorCode::Protocol, err.to_string());
                        let _ = frame::write_frame(w, &f).await;
                        return Err(err);
                    }
                }
            },
        }
    }
    Ok(())
}

/// What a terminal viewer receives.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TerminalEvent {
    /// Bytes the program wrote (escape sequences included).
    Output(Bytes),
    /// The sharer refused an input or resize (the share is read-only).
    Refused {
        /// [`P2pErrorCode::ReadOnly`].
        code: P2pErrorCode,
        /// The sharer's message.
        message: String,
    },
    /// The program exited; nothing follows.
    Exit {
        /// Its exit code, if it exited normally.
        code: Option<u32>,
    },
}

/// The receiving half of a [`TerminalViewer`].
#[derive(Debug)]
pub struct TerminalReader {
    r: quinn::RecvStream,
    done: bool,
    conn: quinn::Connection,
}

impl TerminalReader {
    /// The next event; `Ok(None)` after [`TerminalEvent::Exit`].
    pub async fn next_event(&mut self) -> Result<Option<TerminalEvent>, P2pError> {
        if self.done {
            return Ok(None);
        }
        match frame::read_frame(&mut self.r).await? {
            Some(Frame::TermOutput(data)) => Ok(Some(TerminalEvent::Output(data))),
            Some(Frame::TermExit { code }) => {
                self.done = true;
                Ok(Some(TerminalEvent::Exit { code }))
            }
            Some(Frame::Error(e)) if e.code == P2pErrorCode::ReadOnly => {
                Ok(Some(TerminalEvent::Refused {
                    code: e.code,
                    message: e.message,
                }))
            }
            Some(Frame::Error(e)) => {
                self.done = true;
                Err(P2pError::Remote {
                    code: e.code,
                    message: e.message,
                })
            }
            Some(other) => {
                self.done = true;
                Err(unexpected(&other, "TERM_OUTPUT or TERM_EXIT"))
            }
            None => {
                self.done = true;
                Err(P2pError::Connection(
                    "the sharer ended the stream without TERM_EXIT".into(),
                ))
            }
        }
    }
}

/// The sending half of a [`TerminalViewer`].
#[derive(Debug)]
pub struct TerminalWriter {
    w: quinn::SendStream,
    conn: quinn::Connection,
}

impl TerminalWriter {
    /// Sends keystrokes (refused by a read-only share, see
    /// [`TerminalEvent::Refused`]).
    pub async fn send_input(&mut self, data: impl Into<Bytes>) -> Result<(), P2pError> {
        let data: Bytes = data.into();
        for piece in data.chunks(OUTPUT_FRAME) {
            frame::write_frame(
                &mut self.w,
                &Frame::TermInput(Bytes::copy_from_slice(piece)),
            )
            .await?;
        }
        Ok(())
    }

    /// Asks for a new window size (refused by a read-only share).
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), P2pError> {
        Ok(frame::write_frame(&mut self.w, &Frame::TermResize { cols, rows }).await?)
    }

    /// Leaves the session: the sharer stops the program.
    pub fn close(self) {
        self.conn.close(0u32.into(), b"viewer left");
    }
}

/// Watches a shared terminal. Use it whole, or [`split`](Self::split) it
/// to read and type from two tasks.
#[derive(Debug)]
pub struct TerminalViewer {
    reader: TerminalReader,
    writer: TerminalWriter,
}

impl TerminalViewer {
    pub(crate) fn new(
        wire: Wire<quinn::RecvStream, quinn::SendStream>,
        conn: quinn::Connection,
    ) -> Self {
        Self {
            reader: TerminalReader {
                r: wire.r,
                done: false,
                conn: conn.clone(),
            },
            writer: TerminalWriter { w: wire.w, conn },
        }
    }

    /// See [`TerminalReader::next_event`].
    pub async fn next_event(&mut self) -> Result<Option<TerminalEvent>, P2pError> {
        self.reader.next_event().await
    }

    /// See [`TerminalWriter::send_input`].
    pub async fn send_input(&mut self, data: impl Into<Bytes>) -> Result<(), P2pError> {
        self.writer.send_input(data).await
    }

    /// See [`TerminalWriter::resize`].
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), P2pError> {
        self.writer.resize(cols, rows).await
    }

    /// The two halves.
    pub fn split(self) -> (TerminalReader, TerminalWriter) {
        (self.reader, self.writer)
    }

    /// Leaves the session: the sharer stops the program.
    pub fn close(self) {
        self.writer.close();
    }
}

impl Drop for TerminalReader {
    fn drop(&mut self) {
        if self.done {
            // The share ended: close now rather than waiting for the writer.
            self.conn.close(0u32.into(), b"done");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_share_refuses_input_and_resizes_and_goes_on() {
        let ro = TerminalPolicy::read_only();
        for f in [
            Frame::TermInput(Bytes::from_static(b"rm -rf /\n")),
            Frame::TermResize { cols: 80, rows: 24 },
        ] {
            match viewer_asks(f, ro).expect("refused, not failed") {
                ViewerAsks::Refuse(Frame::Error(e)) => assert_eq!(e.code, P2pErrorCode::ReadOnly),
                other => panic!("expected a read-only refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_controlled_share_takes_input_and_resizes() {
        let rw = TerminalPolicy::allow_control();
        assert_eq!(
            viewer_asks(Frame::TermInput(Bytes::from_static(b"ls\n")), rw).expect("input"),
            ViewerAsks::Input(Bytes::from_static(b"ls\n"))
        );
        assert_eq!(
            viewer_asks(
                Frame::TermResize {
                    cols: 100,
                    rows: 30
                },
                rw
            )
            .expect("resize"),
            ViewerAsks::Resize {
                cols: 100,
                rows: 30
            }
        );
    }

    #[test]
    fn other_frames_from_the_viewer_end_the_share() {
        for policy in [TerminalPolicy::read_only(), TerminalPolicy::allow_control()] {
            assert!(matches!(
                viewer_asks(Frame::FileDone, policy),
                Err(P2pError::Unexpected { .. })
            ));
        }
    }
}
