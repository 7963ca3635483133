//! What user code receives: a [`Message`], a [`Request`] to answer, and [`Incoming`], either of
//! the two. A request answers itself with an error when dropped unanswered (at once, or not at
//! all when the requester's queue is full), and every awaited answer is sent with the same
//! deadline as any other send; [`Request::try_reply_error`] never waits.

use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;
use herd_wire::{Codec, Format, Frame, Kind, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// A message received from the other side.
#[derive(Debug)]
pub struct Message {
    format: Format,
    payload: Bytes,
    fds: Vec<OwnedFd>,
}

impl Message {
    pub(crate) fn from_frame(frame: Frame) -> Message {
        Message {
            format: frame.format,
            payload: frame.payload,
            fds: frame.fds,
        }
    }

    /// Decodes the payload as `T` (any serde type).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(herd_wire::decode_value(self.format, &self.payload)?)
    }

    /// Decodes the payload as an untyped JSON value.
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        self.decode()
    }

    /// The payload bytes as they arrived (raw bytes, msgpack or JSON text, see [`Self::format`]).
    pub fn bytes(&self) -> &Bytes {
        &self.payload
    }

    /// How the payload is encoded.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Descriptors that came with the message.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes the descriptors that came with the message (they are closed with the message
    /// otherwise).
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

/// A request received from the other side, to be answered with [`Request::reply`].
///
/// A request dropped without an answer answers itself with an error, so the requester does not
/// wait for its deadline.
pub struct Request {
    message: Message,
    id: u64,
    replier: Option<Sender>,
    /// How long the reply may wait for room in the requester's queue.
    send_timeout: Duration,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("message", &self.message)
            .finish()
    }
}

impl Request {
    pub(crate) fn new(
        message: Message,
        id: u64,
        replier: Sender,
        send_timeout: Duration,
    ) -> Request {
        Request {
            message,
            id,
            replier: Some(replier),
            send_timeout,
        }
    }

    /// The request's content.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The request's content, mutably (to take its descriptors).
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// Decodes the request's payload as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.message.decode()
    }

    /// Answers with a value.
    pub async fn reply<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.reply_with_fds(value, Vec::new()).await
    }

    /// Answers with a value and descriptors (binary codec only).
    pub async fn reply_with_fds<T: Serialize + ?Sized>(
        mut self,
        value: &T,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        let tx = self.replier.take().ok_or(Error::ChannelClosed)?;
        let (format, payload) = herd_wire::encode_to_send(tx.codec(), value)?;
        let frame = Frame::new(Kind::Reply, format, payload)
            .with_id(self.id)
            .with_fds(fds);
        Ok(tx.send_within(frame, self.send_timeout).await?)
    }

    /// The codec the answer is written in.
    pub(crate) fn codec(&self) -> Option<Codec> {
        self.replier.as_ref().map(Sender::codec)
    }

    /// Answers with a payload already encoded in [`Request::codec`] (made off the runtime's
    /// threads when it is big).
    pub(crate) async fn reply_encoded(
        mut self,
        format: Format,
        payload: Bytes,
    ) -> Result<(), Error> {
        let tx = self.replier.take().ok_or(Error::ChannelClosed)?;
        let frame = Frame::new(Kind::Reply, format, payload).with_id(self.id);
        Ok(tx.send_within(frame, self.send_timeout).await?)
    }

    /// Answers with a payload already encoded in [`Request::codec`] in two parts: `shared`, the
    /// same for many replies (not copied), then `trailer`, this reply's own bytes.
    pub(crate) async fn reply_shared(
        mut self,
        format: Format,
        shared: Bytes,
        trailer: Bytes,
    ) -> Result<(), Error> {
        let tx = self.replier.take().ok_or(Error::ChannelClosed)?;
        let frame = Frame::new(Kind::Reply, format, shared)
            .with_id(self.id)
            .with_trailer(trailer);
        Ok(tx.send_within(frame, self.send_timeout).await?)
    }

    /// Answers with an error text; the requester's call fails with [`Error::Remote`].
    pub async fn reply_error(mut self, text: &str) -> Result<(), Error> {
        let tx = self.replier.take().ok_or(Error::ChannelClosed)?;
        let frame = error_frame(tx.codec(), self.id, text)?;
        Ok(tx.send_within(frame, self.send_timeout).await?)
    }

    /// Answers with an error text if the requester's queue has room now, without waiting:
    /// `true` once queued. A requester whose queue is full is not reading, so the answer is
    /// dropped (its call fails at its own deadline); nothing is kept for it.
    pub fn try_reply_error(mut self, text: &str) -> bool {
        let Some(tx) = self.replier.take() else {
            return false;
        };
        let Ok(frame) = error_frame(tx.codec(), self.id, text) else {
            return false;
        };
        matches!(tx.try_send(frame), Ok(None))
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(tx) = self.replier.take() {
            let Ok(frame) = error_frame(tx.codec(), self.id, "request dropped without a reply")
            else {
                return;
            };
            // Queued at once when there is room. A full queue means the requester is not
            // reading: the answer is dropped rather than kept (no task, nothing waits for it).
            let _ = tx.try_send(frame);
        }
    }
}

fn error_frame(codec: Codec, id: u64, text: &str) -> Result<Frame, Error> {
    let (format, payload) = herd_wire::encode_to_send(codec, text)?;
    Ok(Frame::new(Kind::ReplyError, format, payload).with_id(id))
}

/// What one side receives: a message or a request.
#[derive(Debug)]
pub enum Incoming {
    /// A one-way message.
    Message(Message),
    /// A request awaiting a reply.
    Request(Request),
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use herd_wire::Limits;

    use super::*;

    /// A request whose requester never reads: its side of the channel has a full send queue
    /// (a current-thread runtime's writer cannot drain it while the test does not yield).
    fn unread_request(id: u64) -> (Request, Sender, herd_wire::Receiver) {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let limits = Limits {
            send_queue_frames: 4,
            ..Limits::default()
        };
        let (tx, rx) = herd_wire::channel(ours.into(), Codec::NodeJson, limits).unwrap();
        let filler = || Frame::new(Kind::Message, Format::Json, Bytes::from_static(b"1"));
        let mut queued = 0;
        while tx.try_send(filler()).unwrap().is_none() {
            queued += 1;
            assert!(queued <= 4, "the queue holds at most 4 frames");
        }
        let message = Message::from_frame(filler());
        let request = Request::new(message, id, tx.clone(), Duration::from_secs(30));
        (request, tx, rx)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_to_a_requester_that_does_not_read_is_dropped_at_once() {
        let (request, _tx, _rx) = unread_request(1);
        assert!(!request.try_reply_error("no"));
        let (request, _tx, _rx) = unread_request(2);
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let tasks = alive();
        // Dropped unanswered with a full queue: no task waits to answer it.
        drop(request);
        assert_eq!(alive(), tasks);
    }
}
