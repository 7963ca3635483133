//! The HTTP clients of the balancing tests (`balance.rs`, `rescue.rs`): one response read with
//! deadlines and a size cap, keep-alive and new-connection clients, a tally of what each request
//! got, and a herd serving a program on a free port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{rest, running, Herd, DEADLINE};
use herd_test_support::process::free_port;

/// How long a client waits to connect, to send, and for each read of a response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes of response headers a client reads.
pub const MAX_HEAD: usize = 16 << 10;

/// One HTTP response as a client reads it.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server said `Connection: close` (or spoke HTTP/1.0): it closes after this response.
    pub close: bool,
}

/// Reads one line of a response's head (at most [`MAX_HEAD`] bytes), or says why not.
pub fn head_line(
    r: &mut BufReader<TcpStream>,
    line: &mut String,
    what: &str,
) -> Result<(), String> {
    line.clear();
    r.by_ref()
        .take(MAX_HEAD as u64)
        .read_line(line)
        .map_err(|e| format!("reading the {what}: {e}"))?;
    if !line.ends_with('\n') {
        return Err(format!("connection ended in the {what} ({line:?})"));
    }
    Ok(())
}

/// Reads `n` more bytes onto `body`, or says why not.
pub fn body_bytes(
    r: &mut BufReader<TcpStream>,
    n: usize,
    body: &mut Vec<u8>,
) -> Result<(), String> {
    if body.len() + n > 1 << 20 {
        return Err("body too long".into());
    }
    let start = body.len();
    body.resize(start + n, 0);
    r.read_exact(&mut body[start..])
        .map_err(|e| format!("reading the body ({n} bytes): {e}"))
}

/// Reads one whole response (status line, headers, and a body by `Content-Length` or chunked),
/// or says what was wrong: a reset, a timeout, an end before the response was complete.
pub fn read_response(r: &mut BufReader<TcpStream>) -> Result<Response, String> {
    let mut line = String::new();
    head_line(r, &mut line, "status line")?;
    let status_line = line.trim_end().to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut close = version == "HTTP/1.0";
    let (mut length, mut chunked, mut head) = (None, false, 0);
    loop {
        head_line(r, &mut line, "headers")?;
        head += line.len();
        if head > MAX_HEAD {
            return Err("headers too long".into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(format!("bad header {header:?}"));
        };
        let value = value.trim().to_ascii_lowercase();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value.parse::<usize>();
                length = Some(n.map_err(|_| format!("bad Content-Length {value:?}"))?);
            }
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close |= value.contains("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            head_line(r, &mut line, "chunk size")?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let size =
                usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
            body_bytes(r, size, &mut body)?;
            head_line(r, &mut line, "chunk end")?;
            if size == 0 {
                break;
            }
        }
    } else {
        let n = length.ok_or("a response with neither Content-Length nor chunks")?;
        body_bytes(r, n, &mut body)?;
    }
    Ok(Response {
        status,
        body,
        close,
    })
}

/// The pid in a 200 response's `{"pid": ...}` body, or what was wrong with it.
pub fn pid_of(resp: &Response) -> Result<u64, String> {
    let text = String::from_utf8_lossy(&resp.body);
    if resp.status != 200 {
        return Err(format!("HTTP {}: {text}", resp.status));
    }
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["pid"].as_u64())
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("not a whole answer: {text:?}"))
}

/// A TCP connection with [`IO_TIMEOUT`] for connecting, sending and reading.
pub fn connect(addr: SocketAddr) -> Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    Ok(BufReader::new(s))
}

/// `GET /` on an open keep-alive connection: the response, or why not.
pub fn ask(conn: &mut BufReader<TcpStream>) -> Result<Response, String> {
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .map_err(|e| format!("sending: {e}"))?;
    read_response(conn)
}

/// `GET path` on a new connection (`Connection: close`): the pid that answered, or why the
/// request failed (connect error, reset, timeout, short or non-200 response).
pub fn get_once(addr: SocketAddr, path: &str) -> Result<u64, String> {
    let mut conn = connect(addr)?;
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending: {e}"))?;
    pid_of(&read_response(&mut conn)?)
}

/// Whether the server has closed an idle connection (an end of stream, a reset, or anything
/// unasked for waiting to be read): the client must not send on it.
pub fn closed_while_idle(conn: &BufReader<TcpStream>) -> bool {
    if !conn.buffer().is_empty() {
        return true;
    }
    let s = conn.get_ref();
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8];
    let closed = !matches!(s.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    closed
}

/// A keep-alive HTTP/1.1 client: one connection, requests one after another on it. If the
/// server closed it cleanly after a complete response and before the next request (it said
/// `Connection: close`, or the connection is found closed before sending), the client opens a
/// new one, as any HTTP client does, and that is no failure. A reset, an end or a timeout after
/// the request was sent is.
pub struct KeepAlive {
    pub addr: SocketAddr,
    pub conn: Option<BufReader<TcpStream>>,
    /// Connections opened after the server closed the last one cleanly.
    pub reconnects: u64,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            conn: None,
            reconnects: 0,
        }
    }

    pub fn get(&mut self) -> Result<u64, String> {
        if self.conn.as_ref().is_some_and(closed_while_idle) {
            self.conn = None;
            self.reconnects += 1;
        }
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(connect(self.addr)?),
        };
        match ask(conn) {
            Ok(resp) => {
                if resp.close {
                    self.conn = None;
                    self.reconnects += 1;
                }
                pid_of(&resp)
            }
            Err(e) => {
                self.conn = None;
                Err(format!("after sending: {e}"))
            }
        }
    }
}

/// What the clients saw: requests that succeeded and failed, answers by pid, and the first
/// failures' reasons.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub by_pid: Mutex<BTreeMap<u64, u64>>,
    pub reasons: Mutex<Vec<String>>,
}

impl Tally {
    /// Counts one request's outcome; whether it succeeded.
    pub fn record(&self, outcome: Result<u64, String>) -> bool {
        match outcome {
            Ok(pid) => {
                *self.by_pid.lock().unwrap().entry(pid).or_default() += 1;
                self.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(why) => {
                let mut reasons = self.reasons.lock().unwrap();
                if reasons.len() < 20 {
                    reasons.push(why);
                }
                self.failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn by_pid(&self) -> BTreeMap<u64, u64> {
        self.by_pid.lock().unwrap().clone()
    }

    pub fn reasons(&self) -> Vec<String> {
        self.reasons.lock().unwrap().clone()
    }
}

/// `herd run -w N FLAGS --env PORT=P -- COMMAND` of a program that runs a server listening on
/// `PORT` and prints `listening on PORT`, once every worker said so and the status shows them
/// running; the address to reach them at.
pub fn serve_port(
    name: &str,
    flags: &[&str],
    command: &[&str],
    workers: usize,
) -> (Herd, SocketAddr) {
    let port = free_port();
    let env = format!("PORT={port}");
    let n = workers.to_string();
    let mut args = vec!["-w", &n];
    args.extend(flags);
    args.extend(["--env", &env, "--"]);
    args.extend(command);
    let herd = Herd::start(name, &args);
    let deadline = Instant::now() + DEADLINE;
    let mut listening = 0;
    while listening < workers {
        let left = deadline.saturating_duration_since(Instant::now());
        match herd.out.recv_timeout(left) {
            Ok(line) if line.contains("listening on") => {
                assert!(line.ends_with(&format!("listening on {port}")), "{line}");
                listening += 1;
            }
            Ok(_) => {}
            Err(e) => {
                // herd exited (its output ends soon) or is silent (what it said so far).
                let said: Vec<String> = match e {
                    std::sync::mpsc::RecvTimeoutError::Disconnected => rest(&herd.err),
                    std::sync::mpsc::RecvTimeoutError::Timeout => herd.err.try_iter().collect(),
                };
                panic!("{listening} of {workers} workers listening ({e}); herd said: {said:?}")
            }
        }
    }
    herd.status_until("every worker running", |s| running(s) == workers);
    (herd, ([127, 0, 0, 1], port).into())
}

/// The path of one of the Node servers in `tests/balance_apps`.
pub fn balance_app(script: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/balance_apps")
        .join(script)
        .to_str()
        .unwrap()
        .to_string()
}
