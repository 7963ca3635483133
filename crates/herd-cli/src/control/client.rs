//! The control socket's client side: what `herd status`, `reload`, `scale` and `stop` (and the
//! demo) send, and the typed replies they get. The socket's directory is checked before
//! connecting ([`check_dir`](super::check_dir)); what the answer says is untrusted, so its
//! text reaches the terminal only through [`printable`](super::printable).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::proto::{Answer, Reply, Report, Request, MAX_ANSWER, MAX_WORKERS};
use crate::exit::{Context, Error, Result};

/// Connects to the herd at `path` and sends `request`; the connection, to read the answer from.
pub async fn send(path: &Path, request: &Request) -> Result<UnixStream> {
    // Talk to no one's socket but ours: the directory is checked first (a missing one means
    // no herd, which the connect reports).
    if path
        .parent()
        .is_none_or(|d| d.as_os_str().is_empty() || std::fs::symlink_metadata(d).is_ok())
    {
        super::check_dir(path, false)?;
    }
    let mut stream = UnixStream::connect(path).await.or_fail(|| {
        format!(
            "no herd answers at {} (is it running? --name or --control choose which)",
            path.display()
        )
    })?;
    // A refusal may arrive (and the connection close) before the request is written: the
    // answer says why, so a failed write is not the error to report.
    let _ = stream.write_all(request.to_line().as_bytes()).await;
    Ok(stream)
}

/// The answer line `line` (empty: the connection closed) as a reply, or its error.
pub fn reply(line: &str) -> Result<Reply> {
    if line.is_empty() {
        return Err(Error::failure(
            "herd closed the connection without an answer",
        ));
    }
    let answer: Answer =
        serde_json::from_str(line).or_fail(|| "herd's answer is not understood".into())?;
    answer
        .into_result()
        .map_err(|e| Error::failure(super::printable(&e)))
}

/// Sends `request` to the herd at `path` and returns its reply (waiting up to `limit`; for
/// [`Request::Stop`], up to `limit` more for herd to exit).
pub async fn request(path: &Path, request: Request, limit: Duration) -> Result<Reply> {
    let stream = send(path, &request).await?;
    let mut reader = BufReader::new(stream.take(MAX_ANSWER));
    let mut line = String::new();
    tokio::time::timeout(limit, reader.read_line(&mut line))
        .await
        .or_fail(|| "herd did not answer in time".into())?
        .or_fail(|| "cannot read herd's answer".into())?;
    let reply = reply(&line)?;
    if let Reply::Stopping { .. } = reply {
        // Wait for herd to finish stopping: it closes the connection when it exits.
        let mut rest = String::new();
        let _ = tokio::time::timeout(limit, reader.read_line(&mut rest)).await;
    }
    Ok(reply)
}

fn unexpected(request: Request, reply: Reply) -> Error {
    Error::failure(format!("herd answered {request:?} with {reply:?}"))
}

/// The status of the herd at `path`.
pub async fn status(path: &Path, limit: Duration) -> Result<Report> {
    match request(path, Request::Status, limit).await? {
        Reply::Status(report) => Ok(*report),
        other => Err(unexpected(Request::Status, other)),
    }
}

/// The status of the herd at `path` with every worker's CPU measured: if the first answer
/// lacks a figure (herd measures between two reports), herd is asked again 300 ms later and
/// the first report gets the second's figures for the workers in both (the report stays the
/// one of the moment asked: a worker gone meanwhile is still shown, without a figure).
pub async fn status_with_cpu(path: &Path, limit: Duration) -> Result<Report> {
    let mut first = status(path, limit).await?;
    if first.cpu.iter().all(|(_, p)| p.is_some()) {
        return Ok(first);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Ok(second) = status(path, limit).await else {
        return Ok(first);
    };
    for (id, pct) in &mut first.cpu {
        if pct.is_none() {
            *pct = second
                .cpu
                .iter()
                .find(|(w, _)| w == id)
                .and_then(|(_, p)| *p);
        }
    }
    Ok(first)
}

/// Reloads the herd at `path`; how many workers were replaced.
pub async fn reload(path: &Path, limit: Duration) -> Result<usize> {
    match request(path, Request::Reload, limit).await? {
        Reply::Reloaded { replaced } => Ok(replaced),
        other => Err(unexpected(Request::Reload, other)),
    }
}

/// What `herd scale` is given: a number of workers, or a change to the number wanted now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// This many (1 to [`MAX_WORKERS`]).
    To(usize),
    /// The number wanted now, plus this (`+2`, `-1`).
    By(i64),
}

impl Count {
    /// `4`, `+2` or `-1`; anything else (a count out of 1 to [`MAX_WORKERS`], a word, `+0`) is
    /// refused with what is wrong.
    pub fn parse(text: &str) -> std::result::Result<Count, String> {
        let t = text.trim();
        let digits = t.trim_start_matches(['+', '-']);
        let sign = &t[..t.len() - digits.len()];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || sign.len() > 1 {
            return Err(format!(
                "{text:?} is not a number of workers (4) or a change (+2, -1)"
            ));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is too large"))?;
        let in_range = |n: u64| (1..=MAX_WORKERS as u64).contains(&n);
        match sign {
            "" if in_range(n) => Ok(Count::To(n as usize)),
            "" => Err(format!("workers must be 1 to {MAX_WORKERS}, not {n}")),
            _ if n == 0 || n > MAX_WORKERS as u64 => Err(format!(
                "a change must be 1 to {MAX_WORKERS} workers, not {digits}"
            )),
            "+" => Ok(Count::By(n as i64)),
            _ => Ok(Count::By(-(n as i64))),
        }
    }
}

/// Scales the herd at `path` as `count` says; the number of workers asked for. A change is
/// applied to the number the herd wants now, and must leave 1 to [`MAX_WORKERS`].
pub async fn scale(path: &Path, count: Count, limit: Duration) -> Result<usize> {
    let workers = match count {
        Count::To(n) => n,
        Count::By(d) => {
            let now = status(path, limit).await?.status.wanted as i64;
            let n = now + d;
            if !(1..=MAX_WORKERS as i64).contains(&n) {
                return Err(Error::usage(format!(
                    "{now} workers {d:+} is {n}: workers must be 1 to {MAX_WORKERS}"
                )));
            }
            n as usize
        }
    };
    match request(path, Request::Scale { workers }, limit).await? {
        Reply::Scaled { .. } => Ok(workers),
        other => Err(unexpected(Request::Scale { workers }, other)),
    }
}

/// Stops the herd at `path`; returns once it has exited (or `limit` passed).
pub async fn stop(path: &Path, limit: Duration) -> Result<()> {
    match request(path, Request::Stop, limit).await? {
        Reply::Stopping { .. } => Ok(()),
        other => Err(unexpected(Request::Stop, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_a_number_or_a_change() {
        assert_eq!(Count::parse("4"), Ok(Count::To(4)));
        assert_eq!(Count::parse("+2"), Ok(Count::By(2)));
        assert_eq!(Count::parse("-1"), Ok(Count::By(-1)));
        assert_eq!(Count::parse("4096"), Ok(Count::To(4096)));
        for bad in [
            "0", "4097", "1000000", "+0", "-0", "++2", "+-2", "two", "", "2.5", "-",
        ] {
            assert!(Count::parse(bad).is_err(), "{bad:?} was taken");
        }
        assert!(Count::parse("99999999999999999999999").is_err());
    }
}
