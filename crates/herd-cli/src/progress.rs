//! The cache warm-up's progress bar: on a terminal, `herd run` draws one on stderr from the
//! hub's progress reports; elsewhere the hub's log lines say the same.
//!
//! The bar is drawn through herd's output sink ([`crate::sink`]), like everything else herd
//! prints: a terminal paused with Ctrl-S (or any stalled stderr) drops frames of the bar,
//! counted, and never blocks the hub's task that reports progress.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use herd::cache::{Progress, WarmProgress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use crate::sink::{self, Stream};

/// Columns assumed for the bar (its template needs about 75).
const WIDTH: u16 = 80;

/// A bar on stderr when it is a terminal, log lines otherwise.
pub fn warm_up() -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress::Log;
    }
    // Made at the first report, which gives the number of keys.
    let bar: OnceLock<ProgressBar> = OnceLock::new();
    Progress::report(move |p: &WarmProgress| {
        let bar = bar.get_or_init(|| {
            let target = ProgressDrawTarget::term_like_with_hz(Box::new(SinkTerm::default()), 20);
            let bar = ProgressBar::with_draw_target(Some(p.total), target);
            if let Ok(style) = ProgressStyle::with_template(
                "cache warm-up {bar:40} {pos}/{len} keys {per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(p.done);
        if p.finished {
            bar.finish_and_clear();
        }
    })
}

/// A terminal for indicatif whose output goes to the sink: each drawn frame (gathered until
/// indicatif flushes) is one entry on stderr's queue.
#[derive(Debug, Default)]
struct SinkTerm {
    frame: Mutex<Vec<u8>>,
}

impl SinkTerm {
    fn put(&self, s: &[u8]) -> std::io::Result<()> {
        self.frame
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(s);
        Ok(())
    }

    fn cursor(&self, n: usize, code: char) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.put(format!("\x1b[{n}{code}").as_bytes())
    }
}

impl TermLike for SinkTerm {
    fn width(&self) -> u16 {
        WIDTH
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'A')
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'B')
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'C')
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'D')
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(s.as_bytes())?;
        self.put(b"\n")
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s.as_bytes())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.put(b"\r\x1b[2K")
    }

    fn flush(&self) -> std::io::Result<()> {
        let frame = std::mem::take(
            &mut *self
                .frame
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !frame.is_empty() {
            // Dropped (and counted) when the reader is stalled: the next frame redraws it all.
            sink::global().write(Stream::Err, frame);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_gathered_until_flushed() {
        let t = SinkTerm::default();
        t.clear_line().unwrap();
        t.move_cursor_up(0).unwrap();
        t.move_cursor_up(2).unwrap();
        t.write_str("bar").unwrap();
        assert_eq!(&*t.frame.lock().unwrap(), b"\r\x1b[2K\x1b[2Abar");
        t.flush().unwrap();
        assert!(t.frame.lock().unwrap().is_empty());
    }
}
