//! What the CLI prints on stdout. A closed stdout (`ferry watch | head`) is not an error: the
//! command ends quietly with status 0, as Unix tools do, instead of panicking on EPIPE.

use std::io::Write;

/// The command's output was closed by its reader; `main` exits 0 on it.
#[derive(Debug)]
pub struct OutputClosed;

impl std::fmt::Display for OutputClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for OutputClosed {}

/// Writes `line` and a newline to stdout and flushes it (so `ferry watch` streams).
pub fn line(line: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// Whether `e` is (or wraps) [`OutputClosed`].
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.downcast_ref::<OutputClosed>().is_some()
}
