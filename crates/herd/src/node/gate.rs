//! One handle in flight on a Node json channel, Node's rule (`_handleQueue` in Node's
//! `lib/internal/child_process.js`): a message carrying a descriptor is sent only once the
//! worker has acknowledged the previous one (`NODE_HANDLE_ACK`); the others wait in a bounded
//! queue. Both herd's cluster answers and user sends (`WorkerHandle::send_with_fds`, through `handle_channel`) pass through it.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use bytes::Bytes;
use herd_wire::Frame;
use tokio::sync::oneshot;

/// Handle-carrying frames that may wait behind the one in flight.
pub(crate) const MAX_WAITING: usize = 16;

/// What [`Gate::admit`] did with a frame.
pub(crate) enum Admit {
    /// Nothing is in flight: send it now (it is now the one in flight).
    Now(Frame),
    /// Queued; it is sent (and its `sent` signalled) once the one before is acknowledged.
    Queued,
    /// The queue is full; the frame is handed back.
    Full(Frame),
    /// The channel is gone.
    Closed,
}

struct Waiting {
    frame: Frame,
    server: Option<OwnedFd>,
    sent: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Inner {
    in_flight: bool,
    /// What the frame in flight said (for a `NODE_HANDLE_NACK`: which handle was lost).
    payload: Option<Bytes>,
    /// The listening socket in flight, when it is one (Node listens on it: see `node::session`).
    server: Option<OwnedFd>,
    waiting: VecDeque<Waiting>,
    closed: bool,
}

/// The gate of one channel.
#[derive(Default)]
pub(crate) struct Gate {
    inner: Mutex<Inner>,
}

impl Gate {
    /// Lets a handle-carrying frame through now, or queues it. `server` is a copy of the
    /// descriptor when it is a listening socket; `sent` is told when a queued frame goes out (a
    /// frame whose `sent` receiver is gone by then, its sender having given up, is dropped).
    pub(crate) fn admit(
        &self,
        frame: Frame,
        server: Option<OwnedFd>,
        sent: Option<oneshot::Sender<()>>,
    ) -> Admit {
        let Ok(mut g) = self.inner.lock() else {
            return Admit::Closed;
        };
        if g.closed {
            Admit::Closed
        } else if !g.in_flight {
            g.in_flight = true;
            g.server = server;
            g.payload = Some(frame.payload.clone());
            Admit::Now(frame)
        } else if g.waiting.len() < MAX_WAITING {
            g.waiting.push_back(Waiting {
                frame,
                server,
                sent,
            });
            Admit::Queued
        } else {
            Admit::Full(frame)
        }
    }

    /// The worker answered for the handle in flight (`NODE_HANDLE_ACK` or `_NACK`): returns the
    /// listening socket it was (if it was one), what its frame said, and the next frame to
    /// send, now in flight.
    pub(crate) fn acked(&self) -> (Option<OwnedFd>, Option<Bytes>, Option<Frame>) {
        let Ok(mut g) = self.inner.lock() else {
            return (None, None, None);
        };
        let acked = g.server.take();
        let said = g.payload.take();
        g.in_flight = false;
        while let Some(w) = g.waiting.pop_front() {
            if w.sent.as_ref().is_some_and(|s| s.is_closed()) {
                continue;
            }
            if let Some(sent) = w.sent {
                let _ = sent.send(());
            }
            g.in_flight = true;
            g.server = w.server;
            g.payload = Some(w.frame.payload.clone());
            return (acked, said, Some(w.frame));
        }
        (acked, said, None)
    }

    /// The channel is gone: queued frames are dropped (their senders see the channel closed)
    /// and nothing more is admitted.
    pub(crate) fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.closed = true;
            g.waiting.clear();
            g.server = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use herd_wire::{Format, Kind};

    use super::*;

    fn frame(n: u8) -> Frame {
        Frame::new(Kind::Node, Format::Json, Bytes::from(vec![n]))
    }

    #[test]
    fn one_in_flight_the_rest_in_order_bounded() {
        let gate = Gate::default();
        assert!(matches!(gate.admit(frame(0), None, None), Admit::Now(_)));
        let (tx, mut rx) = oneshot::channel();
        assert!(matches!(
            gate.admit(frame(1), None, Some(tx)),
            Admit::Queued
        ));
        let (gone, gone_rx) = oneshot::channel();
        drop(gone_rx);
        assert!(matches!(
            gate.admit(frame(2), None, Some(gone)),
            Admit::Queued
        ));
        assert!(matches!(gate.admit(frame(3), None, None), Admit::Queued));
        for n in 4..=MAX_WAITING {
            assert!(matches!(
                gate.admit(frame(n as u8), None, None),
                Admit::Queued
            ));
        }
        assert!(matches!(gate.admit(frame(99), None, None), Admit::Full(_)));
        let (_, _, next) = gate.acked();
        assert_eq!(&next.unwrap().payload[..], &[1]);
        assert!(rx.try_recv().is_ok(), "its sender is told");
        let (_, _, next) = gate.acked();
        assert_eq!(
            &next.unwrap().payload[..],
            &[3],
            "a given-up frame is skipped"
        );
        gate.close();
        assert!(matches!(gate.admit(frame(5), None, None), Admit::Closed));
    }
}
