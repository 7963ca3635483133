//! `herd logs`: asks a running herd for its workers' recent lines (and with `-f` the new ones as
//! they come) and prints them as `herd run` does: `[wN] line`, a stderr line on stderr; with
//! `--time` each line starts with when herd read it (RFC 3339, UTC); with `--json` one JSON
//! object per line (`seq`, `ts`, `worker`, `stream`, `line`). What herd sends is untrusted:
//! each line is bounded ([`MAX_LINE`]) and reaches the terminal through
//! [`crate::control::printable`].

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::control::client::{reply, send};
use crate::control::printable;
use crate::control::proto::{LogLine, Reply, Request};
use crate::exit::{Context, Error, Exit, Result};

/// The longest line herd may send (a worker's line is at most 16 KiB, escaped for JSON).
pub const MAX_LINE: usize = 1 << 20;
/// How long herd has to answer before the first line.
const ANSWER_TIME: Duration = Duration::from_secs(30);
/// How long the recent lines may take to arrive in all (herd gives itself 60 s to send them).
const RECENT_TIME: Duration = Duration::from_secs(90);

/// What `herd logs` was asked.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    /// Recent lines to print first.
    pub lines: usize,
    /// Only this worker's.
    pub worker: Option<u64>,
    /// Only lines from this time on.
    pub since: Option<SystemTime>,
    /// Go on with new lines.
    pub follow: bool,
    /// JSON lines.
    pub json: bool,
    /// Each line with its time.
    pub time: bool,
}

/// `--since`: a duration back from now (`10m`, `2h 30m`, `45s`), an RFC 3339 time
/// (`2026-12-07T20:00:00Z`) or seconds since the epoch.
pub fn parse_since(text: &str) -> std::result::Result<SystemTime, String> {
    let t = text.trim();
    if let Ok(d) = humantime::parse_duration(t) {
        return SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("{text:?} is too long ago"));
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        return Ok(at);
    }
    match t.parse::<f64>() {
        Ok(s) if (0.0..1e12).contains(&s) => Ok(UNIX_EPOCH + Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{text:?} is not a time: a duration back from now (10m, 1h), an RFC 3339 time \
             (2026-12-07T20:00:00Z) or seconds since the epoch"
        )),
    }
}

/// Prints the logs of the herd at `path` as `ask` says; returns when they are printed (or, when
/// following, once herd goes away or the reader closes the pipe).
pub async fn logs(path: &Path, ask: &Ask) -> Result<Exit> {
    let since_ms = ask.since.map(|t| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
    });
    let request = Request::Logs {
        lines: ask.lines,
        worker: ask.worker,
        since_ms,
        follow: ask.follow,
    };
    let stream = send(path, &request).await?;
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut line = Vec::new();
    let first = tokio::time::timeout(ANSWER_TIME, read_line(&mut reader, &mut line))
        .await
        .or_fail(|| "herd did not answer in time".into())??;
    let text = if first {
        String::from_utf8_lossy(&line).into_owned()
    } else {
        String::new()
    };
    match reply(&text)? {
        Reply::Logs { .. } => {}
        other => return Err(Error::failure(format!("herd answered logs with {other:?}"))),
    }
    let mut printer = Printer::new(std::io::stdout(), std::io::stderr());
    let lines = print_lines(&mut reader, &mut printer, ask);
    let printed = if ask.follow {
        // Following has no end but herd's (or the reader's).
        lines.await
    } else {
        tokio::time::timeout(RECENT_TIME, lines)
            .await
            .or_fail(|| "herd did not send its recent lines in time".into())
            .and_then(|r| r)
    };
    // Whatever was read before an error (or the deadline) is still printed.
    printer.flush();
    printed
}

/// Reads herd's lines and prints them until the connection ends (or the reader closes the
/// pipe). On an error the caller flushes what was gathered.
async fn print_lines<R, O, E>(
    reader: &mut BufReader<R>,
    printer: &mut Printer<O, E>,
    ask: &Ask,
) -> Result<Exit>
where
    R: tokio::io::AsyncRead + Unpin,
    O: Write,
    E: Write,
{
    let mut line = Vec::new();
    loop {
        if !read_line(reader, &mut line).await? {
            printer.flush();
            return Ok(Exit::Success);
        }
        let parsed: LogLine = serde_json::from_slice(&line)
            .or_fail(|| "herd sent a log line that is not understood".into())?;
        printer.add(&parsed, ask);
        // Written once what has arrived is taken (or 64 KiB gathered): a write per batch,
        // not per line.
        let drained = reader.buffer().is_empty();
        if (drained || printer.pending() >= 64 << 10) && !printer.flush() {
            return Ok(Exit::Success);
        }
    }
}

/// Reads one line (without its newline) into `line`; false at the end of the connection.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> Result<bool> {
    line.clear();
    loop {
        let buf = r
            .fill_buf()
            .await
            .or_fail(|| "cannot read from herd".into())?;
        if buf.is_empty() {
            // A last line without its newline still counts.
            return Ok(!line.is_empty());
        }
        let (used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let take = if done { used - 1 } else { used };
        if line.len() + take > MAX_LINE {
            return Err(Error::failure("herd sent a line over 1 MiB"));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(used);
        if done {
            return Ok(true);
        }
    }
}

/// What is to be printed, in the order it came: runs of lines of one stream (true: stderr).
struct Printer<O, E> {
    runs: Vec<(bool, String)>,
    pending: usize,
    out: O,
    err: E,
}

impl<O: Write, E: Write> Printer<O, E> {
    fn new(out: O, err: E) -> Self {
        Printer {
            runs: Vec::new(),
            pending: 0,
            out,
            err,
        }
    }

    fn pending(&self) -> usize {
        self.pending
    }

    /// Adds one line.
    fn add(&mut self, l: &LogLine, ask: &Ask) {
        let (text, to_err) = format_line(l, ask);
        let text = printable(&text);
        self.pending += text.len();
        match self.runs.last_mut() {
            Some((e, run)) if *e == to_err => run.push_str(&text),
            _ => self.runs.push((to_err, text)),
        }
    }

    /// Writes what was added, in order; false once the reader has closed a pipe.
    fn flush(&mut self) -> bool {
        let mut ok = true;
        for (to_err, run) in self.runs.drain(..) {
            let w: &mut dyn Write = if to_err { &mut self.err } else { &mut self.out };
            ok &= w.write_all(run.as_bytes()).and_then(|()| w.flush()).is_ok();
        }
        self.pending = 0;
        ok
    }
}

/// One line as printed, and whether it goes to stderr.
fn format_line(l: &LogLine, ask: &Ask) -> (String, bool) {
    match l {
        LogLine::Lost { lost } => (
            format!("herd logs: {lost} lines dropped: this reader was too slow\n"),
            true,
        ),
        LogLine::Line(e) if ask.json => {
            let mut s = serde_json::to_string(e).expect("an entry serialises");
            s.push('\n');
            (s, false)
        }
        LogLine::Line(e) => {
            let mut s = String::new();
            if ask.time {
                let at = UNIX_EPOCH + Duration::from_secs_f64(e.ts.clamp(0.0, 1e11));
                s.push_str(&humantime::format_rfc3339_millis(at).to_string());
                s.push(' ');
            }
            s.push_str(&format!("[w{}] {}\n", e.worker, e.line));
            (s, e.stream == "stderr")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_times_and_epoch_seconds() {
        let ten = parse_since("10m").unwrap();
        let back = SystemTime::now().duration_since(ten).unwrap();
        assert!(
            back >= Duration::from_secs(600) && back < Duration::from_secs(660),
            "{back:?}"
        );
        assert_eq!(
            parse_since("2026-12-07T20:00:00Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_796_673_600)
        );
        assert_eq!(
            parse_since("1.5").unwrap(),
            UNIX_EPOCH + Duration::from_millis(1500)
        );
        for bad in ["", "yesterday", "-5", "1e400", "NaN", "99999999999999"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }

    /// What a printer wrote, stream by stream, in the order written.
    #[derive(Clone, Default)]
    struct Record(std::sync::Arc<std::sync::Mutex<Vec<(char, String)>>>, char);

    impl Write for Record {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let text = String::from_utf8_lossy(b).into_owned();
            self.0.lock().unwrap().push((self.1, text));
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry(seq: u64, stream: &str) -> String {
        let e = crate::logs::Entry {
            seq,
            ts: 1.0,
            worker: 1,
            stream: stream.into(),
            line: format!("l{seq}"),
        };
        serde_json::to_string(&LogLine::Line(e)).unwrap() + "\n"
    }

    /// Lines keep their order across streams (a batch wrote all of stdout, then all of
    /// stderr), and what was read before a line herd garbled is still printed.
    #[tokio::test]
    async fn lines_print_in_order_and_survive_a_bad_line() {
        let text = entry(1, "stdout") + &entry(2, "stderr") + &entry(3, "stdout") + "{bad\n";
        let mut reader = BufReader::new(text.as_bytes());
        let log = Record::default();
        let (out, err) = (Record(log.0.clone(), 'o'), Record(log.0.clone(), 'e'));
        let mut printer = Printer::new(out, err);
        let r = print_lines(&mut reader, &mut printer, &Ask::default()).await;
        assert!(r.is_err(), "the bad line is an error");
        printer.flush();
        let written = log.0.lock().unwrap().clone();
        assert_eq!(
            written,
            [
                ('o', "[w1] l1\n".to_string()),
                ('e', "[w1] l2\n".to_string()),
                ('o', "[w1] l3\n".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let long = vec![b'a'; MAX_LINE + 10];
        let mut r = BufReader::new(&long[..]);
        let mut line = Vec::new();
        assert!(read_line(&mut r, &mut line).await.is_err());
        let mut r = BufReader::new(&b"one\ntwo"[..]);
        assert!(read_line(&mut r, &mut line).await.unwrap());
        assert_eq!(line, b"one");
        assert!(read_line(&mut r, &mut line).await.unwrap());
        assert_eq!(line, b"two");
        assert!(!read_line(&mut r, &mut line).await.unwrap());
    }
}
