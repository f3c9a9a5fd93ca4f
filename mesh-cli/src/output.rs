//! Printing: text for people, one JSON object per line with `--json`, and
//! progress bars (only when stdout is a terminal and `--json` is off).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::Ctx;

/// Prints `value` as one JSON line with `--json`, else `text`.
pub(crate) fn emit(ctx: &Ctx, value: Value, text: impl FnOnce() -> String) {
    let mut out = std::io::stdout().lock();
    let _ = if ctx.json {
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{}", text())
    };
    let _ = out.flush();
}

/// A byte progress bar with rate and time left; hidden when stdout is not
/// a terminal or with `--json`.
pub(crate) fn progress_bar(ctx: &Ctx, total: u64, label: &str) -> ProgressBar {
    if ctx.json || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `1.5 MiB`-style sizes.
pub(crate) fn human_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}
