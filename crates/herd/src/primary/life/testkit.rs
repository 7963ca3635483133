//! What the life's tests share: a worker and its hand-moved clock, the effects by name.

use std::time::Duration;

use rustix::process::Signal;
use tokio::time::Instant;

use super::*;

pub(super) const GRACE: Duration = Duration::from_secs(8);
pub(super) const HELLO: Duration = Duration::from_secs(5);
pub(super) const SETTLE: Duration = Duration::from_secs(1);

pub(super) fn rules(stop: StopWith, node: bool) -> Rules {
    Rules {
        grace: GRACE,
        handshake_timeout: HELLO,
        stop,
        online_at_start: node,
        node,
        unresponsive: None,
        rescue: Rescue::End,
        settle: SETTLE,
    }
}

pub(super) const LIMIT: Duration = Duration::from_secs(30);
pub(super) const EVERY: Duration = Duration::from_secs(10);

/// A herd worker that said hello, pinged with a limit of [`LIMIT`] (so every [`EVERY`]).
pub(super) fn pinged() -> W {
    let mut r = rules(StopWith::EndOfStream, false);
    r.unresponsive = Some(LIMIT);
    let (mut w, _) = W::new(r);
    assert_eq!(w.on(Input::Hello), ["Online"]);
    w
}

/// A test's worker and its clock.
pub(super) struct W {
    pub(super) life: Life,
    pub(super) now: Instant,
}

impl W {
    pub(super) fn new(rules: Rules) -> (W, Vec<Effect>) {
        let now = Instant::now();
        let (life, fx) = Life::start(rules, now, true);
        (W { life, now }, fx)
    }

    /// A herd worker (binary codec, end-of-stream stop) that said hello.
    pub(super) fn online() -> W {
        let (mut w, _) = W::new(rules(StopWith::EndOfStream, false));
        w.on(Input::Hello);
        w
    }

    /// A Node cluster worker, SIGTERM as its stop signal.
    pub(super) fn node() -> W {
        W::new(rules(StopWith::Signal(Signal::TERM), true)).0
    }

    pub(super) fn on(&mut self, input: Input) -> Vec<String> {
        names(self.life.handle(self.now, input))
    }

    /// Moves the clock by `d` and ticks.
    pub(super) fn after(&mut self, d: Duration) -> Vec<String> {
        self.now += d;
        self.on(Input::Tick)
    }

    /// Moves the clock to the next deadline and ticks.
    pub(super) fn next(&mut self) -> Vec<String> {
        self.now = self.life.next_deadline().expect("a deadline");
        self.on(Input::Tick)
    }

    pub(super) fn in_next(&self) -> Option<Duration> {
        self.life.next_deadline().map(|t| t - self.now)
    }
}

pub(super) fn names(fx: Vec<Effect>) -> Vec<String> {
    fx.into_iter()
        .map(|e| match e {
            Effect::Signal(s) if s == Signal::KILL => "kill".to_string(),
            Effect::Signal(s) if s == Signal::TERM => "term".to_string(),
            Effect::Signal(s) if s == Signal::INT => "int".to_string(),
            Effect::Signal(s) => format!("signal {}", s.as_raw()),
            Effect::Error(e) => format!("error: {e}"),
            Effect::Exited(ExitStatus { code: Some(c), .. }) => format!("exited exit code {c}"),
            Effect::Exited(ExitStatus { signal, .. }) => format!("exited signal {signal:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

pub(super) fn code(c: i32) -> ExitStatus {
    ExitStatus {
        code: Some(c),
        signal: None,
    }
}

pub(super) fn killed() -> ExitStatus {
    ExitStatus {
        code: None,
        signal: Some(9),
    }
}
