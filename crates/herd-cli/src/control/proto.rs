//! The control protocol's messages: one JSON [`Request`] per line from the client, one JSON
//! [`Answer`] per line from herd. Both sides build and read these types; nothing else knows the
//! wire format.
//!
//! Requests: `{"cmd": "status"}`, `{"cmd": "reload"}`, `{"cmd": "scale", "workers": N}`,
//! `{"cmd": "stop"}`, `{"cmd": "logs", "lines": N, "worker": ID, "since_ms": T, "follow": B}`.
//! Answers: `{"ok": true, ...}` with the [`Reply`]'s fields, or `{"ok": false, "error": "..."}`.
//! A `logs` answer (`{"ok": true, "logs": N}`) is followed by N [`LogLine`]s, one per line, and
//! when following by more as they come, until either side closes the connection.

use std::time::Duration;

use herd::cache::HubStats;
use herd::service::Status;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most bytes a request line may have.
pub const MAX_REQUEST: u64 = 64 << 10;
/// How long a client has to send its request once connected.
pub const REQUEST_TIME: Duration = Duration::from_secs(10);
/// The most bytes an answer line may have.
pub const MAX_ANSWER: u64 = 16 << 20;
/// The most workers `scale` accepts.
pub const MAX_WORKERS: usize = 4096;

/// A control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// `{"cmd": "status"}`: the workers, cache and sockets.
    Status,
    /// `{"cmd": "reload"}`: replace every worker, a batch at a time.
    Reload,
    /// `{"cmd": "scale", "workers": N}`: change the number of workers.
    Scale {
        /// The new number of workers, 1 to [`MAX_WORKERS`].
        #[serde(deserialize_with = "worker_count")]
        workers: usize,
    },
    /// `{"cmd": "stop"}`: stop gracefully; the connection closes once herd has exited.
    Stop,
    /// `{"cmd": "logs", ...}`: the workers' recent output lines, then (`follow`) new ones.
    Logs {
        /// How many recent lines, at most [`MAX_LOG_LINES`] (default 0).
        #[serde(default, deserialize_with = "log_lines")]
        lines: usize,
        /// Only this worker's lines.
        #[serde(default)]
        worker: Option<u64>,
        /// Only lines read at or after this time (milliseconds since the epoch).
        #[serde(default)]
        since_ms: Option<u64>,
        /// Whether to go on with new lines as they come.
        #[serde(default)]
        follow: bool,
    },
}

/// The most recent lines a `logs` request may ask for.
pub const MAX_LOG_LINES: usize = 1_000_000;

fn log_lines<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = u64::deserialize(d)?;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_LOG_LINES => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "logs takes lines: 0 to {MAX_LOG_LINES}, not {n}"
        ))),
    }
}

/// What follows a `logs` answer, one per line: a worker's output line, or how many lines were
/// dropped before the next because the reader was too slow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogLine {
    /// A line of a worker's output.
    Line(crate::logs::Entry),
    /// Lines lost here.
    Lost {
        /// How many.
        lost: u64,
    },
}

fn worker_count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = u64::deserialize(d)?;
    match usize::try_from(n) {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "scale needs workers: 1 to {MAX_WORKERS}, not {n}"
        ))),
    }
}

/// Parses one request line; the error says what is wrong with it.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

/// A socket herd listens on for its workers, as `herd status` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listening {
    /// The address, with the port the kernel chose for `:0`.
    pub address: String,
    /// Whether each worker has a socket of its own on it (`--reuseport`) rather than sharing
    /// the primary's.
    pub reuseport: bool,
}

/// What `status` answers (and `herd status --json` prints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The workers.
    pub status: Status,
    /// The host-shared cache's counters, if herd serves one.
    pub cache: Option<HubStats>,
    /// The sockets herd listens on for its workers.
    pub listening: Vec<Listening>,
    /// herd's process id.
    pub pid: u32,
    /// Output lines `herd logs -f` readers lost for being too slow.
    #[serde(default)]
    pub logs_dropped: u64,
    /// Each worker's CPU use now, in percent of one CPU, by worker id (none: not measured).
    #[serde(default)]
    pub cpu: Vec<(u64, Option<f64>)>,
    /// The herd's name (`--name`).
    #[serde(default)]
    pub name: String,
    /// Seconds since herd started.
    #[serde(default)]
    pub uptime_s: f64,
    /// Where the worker count came from (`given`, or what decided `auto`: CPUs online, the
    /// affinity or the cgroup quota).
    #[serde(default)]
    pub workers_from: String,
}

/// What a request that succeeded answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// To `status`.
    Status(Box<Report>),
    /// To `reload`, once it is done.
    Reloaded {
        /// Workers replaced.
        replaced: usize,
    },
    /// To `scale`.
    Scaled {
        /// The new number of workers.
        workers: usize,
    },
    /// To `stop`, before it stops.
    Stopping {
        /// Always true.
        stopping: Yes,
    },
    /// To `logs`: how many recent lines follow.
    Logs {
        /// That many.
        logs: usize,
    },
}

/// An answer: `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
pub enum Answer {
    /// Done.
    Ok(Reply),
    /// Refused or failed, and why.
    Err {
        /// What went wrong.
        error: String,
    },
}

impl Answer {
    /// A refusal saying `error`.
    pub fn err(error: impl std::fmt::Display) -> Answer {
        Answer::Err {
            error: error.to_string(),
        }
    }

    /// The reply, or the error as a string.
    pub fn into_result(self) -> Result<Reply, String> {
        match self {
            Answer::Ok(r) => Ok(r),
            Answer::Err { error } => Err(error),
        }
    }

    /// The answer as one line, newline included.
    pub fn to_line(&self) -> String {
        line(self)
    }
}

impl Request {
    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        line(self)
    }
}

fn line(v: &impl Serialize) -> String {
    // Plain structs, maps with string keys and finite numbers: always serialisable.
    let mut s = serde_json::to_string(v).expect("a control message serialises");
    s.push('\n');
    s
}

/// The answer as it is on the wire, with its `ok` field.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire {
    Err {
        ok: Bool<false>,
        error: String,
    },
    Ok {
        ok: Bool<true>,
        #[serde(flatten)]
        reply: Reply,
    },
}

impl From<Answer> for Wire {
    fn from(a: Answer) -> Wire {
        match a {
            Answer::Ok(reply) => Wire::Ok { ok: Bool, reply },
            Answer::Err { error } => Wire::Err { ok: Bool, error },
        }
    }
}

impl From<Wire> for Answer {
    fn from(w: Wire) -> Answer {
        match w {
            Wire::Ok { reply, .. } => Answer::Ok(reply),
            Wire::Err { error, .. } => Answer::Err { error },
        }
    }
}

/// The boolean `B` and nothing else, on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bool<const B: bool>;

/// `true` on the wire.
pub type Yes = Bool<true>;

impl<const B: bool> Serialize for Bool<B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(B)
    }
}

impl<'de, const B: bool> Deserialize<'de> for Bool<B> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if bool::deserialize(d)? == B {
            Ok(Bool)
        } else {
            Err(serde::de::Error::custom(format!("expected {B}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd::service::WorkerStatus;

    proptest::proptest! {
        /// Any line parses or is refused with a reason; scale is always within bounds.
        #[test]
        fn any_line_parses_or_is_refused(line in ".{0,80}", n in proptest::num::u64::ANY) {
            match parse_request(&line) {
                Ok(Request::Scale { workers }) => {
                    proptest::prop_assert!((1..=MAX_WORKERS).contains(&workers))
                }
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(!e.is_empty()),
            }
            let scale = format!("{{\"cmd\":\"scale\",\"workers\":{n}}}");
            let ok = (1..=MAX_WORKERS as u64).contains(&n);
            proptest::prop_assert_eq!(parse_request(&scale).is_ok(), ok);
        }
    }

    #[test]
    fn requests_parse_or_say_why_not() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(r#"{"cmd":"scale","workers":3}"#),
            Ok(Request::Scale { workers: 3 })
        );
        for bad in [
            "",
            "[]",
            r#"{"cmd":5}"#,
            r#"{"cmd":"scale"}"#,
            r#"{"cmd":"scale","workers":0}"#,
            r#"{"cmd":"scale","workers":100000}"#,
            r#"{"cmd":"scale","workers":-1}"#,
            r#"{"cmd":"rm -rf"}"#,
            r#"{"cmd":"logs","lines":1000001}"#,
            r#"{"cmd":"logs","lines":-1}"#,
            r#"{"cmd":"logs","worker":"w1"}"#,
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_lines_round_trip() {
        let entry = crate::logs::Entry {
            seq: 7,
            ts: 1.5,
            worker: 2,
            stream: "stderr".into(),
            line: "a \u{1b}[31m line".into(),
        };
        for l in [LogLine::Line(entry), LogLine::Lost { lost: 12 }] {
            let text = serde_json::to_string(&l).unwrap();
            assert_eq!(serde_json::from_str::<LogLine>(&text).unwrap(), l, "{text}");
        }
        assert_eq!(
            parse_request(r#"{"cmd":"logs"}"#),
            Ok(Request::Logs {
                lines: 0,
                worker: None,
                since_ms: None,
                follow: false
            })
        );
    }

    #[test]
    fn what_the_client_builds_the_server_parses() {
        for req in [
            Request::Status,
            Request::Reload,
            Request::Stop,
            Request::Scale { workers: 1 },
            Request::Scale {
                workers: MAX_WORKERS,
            },
            Request::Logs {
                lines: 15,
                worker: Some(2),
                since_ms: Some(1_700_000_000_000),
                follow: true,
            },
        ] {
            let line = req.to_line();
            assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
            assert_eq!(parse_request(&line), Ok(req));
        }
        // The wire format the protocol has always had.
        assert_eq!(
            Request::Scale { workers: 3 }.to_line(),
            "{\"cmd\":\"scale\",\"workers\":3}\n"
        );
        assert_eq!(Request::Stop.to_line(), "{\"cmd\":\"stop\"}\n");
    }

    fn report() -> Report {
        Report {
            status: Status {
                wanted: 2,
                workers: vec![WorkerStatus {
                    slot: Some(0),
                    worker: herd::WorkerId(3),
                    pid: 1234,
                    state: "running".into(),
                    uptime_s: 61.5,
                    restarts: 1,
                    unresponsive: 0,
                    memory_replaced: 0,
                    rss: 10 << 20,
                    pss: 5 << 20,
                    cpu_s: 1.25,
                    measured: true,
                    messages: 7,
                    internal_dropped: 0,
                    last_exit: Some("exit code 1".into()),
                    listen_error: None,
                }],
                restarting: vec![(1, 0.4)],
                failed: vec![],
                reloading: false,
                relayed: (0, 0),
                serving: vec![],
                reloads: 2,
                output_dropped: 0,
                events_dropped: 0,
            },
            cache: Some(HubStats {
                hits: 5,
                warm: true,
                ..HubStats::default()
            }),
            listening: vec![Listening {
                address: "127.0.0.1:8080".into(),
                reuseport: false,
            }],
            pid: 99,
            logs_dropped: 0,
            cpu: vec![(3, Some(12.5))],
            name: "app".into(),
            uptime_s: 3.5,
            workers_from: "given".into(),
        }
    }

    #[test]
    fn what_the_server_answers_the_client_reads() {
        for answer in [
            Answer::Ok(Reply::Status(Box::new(report()))),
            Answer::Ok(Reply::Status(Box::new(Report {
                cache: None,
                ..report()
            }))),
            Answer::Ok(Reply::Reloaded { replaced: 4 }),
            Answer::Ok(Reply::Scaled { workers: 4 }),
            Answer::Ok(Reply::Stopping { stopping: Bool }),
            Answer::Ok(Reply::Logs { logs: 3 }),
            Answer::err("the service is stopping"),
        ] {
            let line = answer.to_line();
            let back: Answer = serde_json::from_str(&line).unwrap();
            assert_eq!(back, answer, "{line}");
        }
    }

    #[test]
    fn answers_keep_their_wire_format() {
        let v = |a: Answer| serde_json::to_value(a).unwrap();
        assert_eq!(
            v(Answer::Ok(Reply::Reloaded { replaced: 4 })),
            serde_json::json!({"ok": true, "replaced": 4})
        );
        assert_eq!(
            v(Answer::Ok(Reply::Stopping { stopping: Bool })),
            serde_json::json!({"ok": true, "stopping": true})
        );
        assert_eq!(
            v(Answer::err("no")),
            serde_json::json!({"ok": false, "error": "no"})
        );
        let s = v(Answer::Ok(Reply::Status(Box::new(report()))));
        assert_eq!(s["ok"], true);
        assert_eq!(s["pid"], 99);
        assert_eq!(s["status"]["workers"][0]["pid"], 1234);
        assert_eq!(s["listening"][0]["address"], "127.0.0.1:8080");
        assert_eq!(s["cache"]["hits"], 5);
        // An error is never read as a success, nor the other way round.
        assert!(serde_json::from_str::<Answer>(r#"{"ok":true,"error":"x"}"#).is_err());
        assert!(serde_json::from_str::<Answer>(r#"{"ok":false,"replaced":1}"#).is_err());
    }
}
