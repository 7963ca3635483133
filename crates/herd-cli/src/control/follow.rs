//! The server side of `herd logs`: the recent lines the request asks for, then (when following)
//! each new line as it comes, until the client closes the connection. The connection's task
//! is the only one that waits on the client: lines reach it through a [`Follower`]'s bounded
//! queue, so a slow client loses lines (and is told how many) and never slows herd. A client
//! that takes nothing for [`WRITE_TIME`] is dropped.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::proto::{Answer, LogLine, Reply};
use crate::exit::{Context, Error, Result};
use crate::logs::{Entry, Filter, Logs, Next};

/// How long one write to a `herd logs` client may take before it is given up on.
pub const WRITE_TIME: Duration = Duration::from_secs(60);
/// How long sending the recent lines may take in all.
pub const BACKLOG_TIME: Duration = Duration::from_secs(60);
/// Requests sending recent lines at once (each holds its lines until sent): more are refused.
pub const MAX_BACKLOGS: usize = 4;
/// Bytes gathered before a write.
const BATCH: usize = 64 << 10;

/// What a `logs` request asks for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ask {
    pub(super) lines: usize,
    pub(super) filter: Filter,
    pub(super) follow: bool,
}

/// Answers a `logs` request on `write`; `read` is the rest of the connection (its end ends a
/// follow).
pub(super) async fn serve<R, W>(mut read: R, write: &mut W, logs: &Logs, ask: Ask) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // Following starts before the recent lines are taken, so no line falls between the two;
    // one in both is skipped the second time (by its number).
    let follower = if ask.follow {
        match logs.follow(ask.filter) {
            Ok(f) => Some(f),
            Err(_) => {
                let why = format!(
                    "{} clients follow this herd's logs already: try again once one stops",
                    crate::logs::ring::MAX_FOLLOWERS
                );
                return send(write, Answer::err(why).to_line().as_bytes()).await;
            }
        }
    } else {
        None
    };
    static BACKLOGS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_BACKLOGS);
    let Ok(place) = BACKLOGS.try_acquire() else {
        let why = format!("{MAX_BACKLOGS} clients are reading this herd's logs already: try again");
        return send(write, Answer::err(why).to_line().as_bytes()).await;
    };
    let recent = logs.recent(ask.lines, ask.filter);
    let mut seen = recent.last().map_or(0, |e| e.seq);
    let mut out = Answer::Ok(Reply::Logs { logs: recent.len() })
        .to_line()
        .into_bytes();
    let backlog = async {
        for e in &recent {
            push(&mut out, e);
            if out.len() >= BATCH {
                send(write, &out).await?;
                out.clear();
            }
        }
        send(write, &out).await
    };
    tokio::time::timeout(BACKLOG_TIME, backlog)
        .await
        .map_err(|_| {
            Error::failure("the logs client took more than 60 s for the recent lines")
        })??;
    drop(recent);
    drop(place);
    let mut out = Vec::new();
    let Some(follower) = follower else {
        return Ok(());
    };
    let mut byte = [0u8; 1];
    loop {
        tokio::select! {
            items = follower.next() => {
                out.clear();
                for item in items {
                    match item {
                        Next::Lost(lost) => out.extend_from_slice(line(&LogLine::Lost { lost }).as_bytes()),
                        Next::Line(e) if e.seq > seen => {
                            seen = e.seq;
                            push(&mut out, &e);
                        }
                        Next::Line(_) => {}
                    }
                    if out.len() >= BATCH {
                        send(write, &out).await?;
                        out.clear();
                    }
                }
                send(write, &out).await?;
            }
            // The client closed (or wrote, which it has no reason to): the follow ends.
            _ = read.read(&mut byte) => return Ok(()),
        }
    }
}

fn line(l: &LogLine) -> String {
    let mut s = serde_json::to_string(l).expect("a log line serialises");
    s.push('\n');
    s
}

/// One entry as its line (what `LogLine::Line` is on the wire), written in place.
fn push(out: &mut Vec<u8>, e: &Entry) {
    serde_json::to_writer(&mut *out, e).expect("an entry serialises");
    out.push(b'\n');
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(write: &mut W, bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(WRITE_TIME, write.write_all(bytes))
        .await
        .map_err(|_| Error::failure("the logs client took nothing for 60 s"))?
        .or_fail(|| "cannot write to the logs client".into())
}
