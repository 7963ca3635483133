//! [`Peer`]: the other end of a channel, as seen from either side. A primary's
//! [`crate::WorkerHandle`] and a [`crate::Worker`] both dereference to one, so sending looks the
//! same in both directions.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd_wire::{Codec, Format, Frame, Kind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::message::{Control, Endpoint};
use crate::{Error, Message};

/// Sends to the other end of a channel. Cheap to clone; clones share one queue.
#[derive(Clone)]
pub struct Peer {
    ep: Arc<Endpoint>,
    request_timeout: Duration,
}

impl Peer {
    pub(crate) fn new(ep: Arc<Endpoint>, request_timeout: Duration) -> Peer {
        Peer {
            ep,
            request_timeout,
        }
    }

    /// The codec of the channel.
    pub fn codec(&self) -> Codec {
        self.ep.codec()
    }

    /// Messages and requests sent so far.
    pub fn sent(&self) -> u64 {
        self.ep.sent.load(Ordering::Relaxed)
    }

    /// Whether the channel can no longer send.
    pub fn is_closed(&self) -> bool {
        self.ep.sender().is_closed()
    }

    /// Sends a value (any serde type, or a `serde_json::Value`). Waits while the channel's queue
    /// is full.
    pub async fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        self.ep.send_value(Kind::Message, value, Vec::new()).await
    }

    /// Sends a value with descriptors (a listener, a stream, a file: anything as `OwnedFd`).
    /// They arrive close-on-exec; the binary codec only.
    pub async fn send_with_fds<T: Serialize + ?Sized>(
        &self,
        value: &T,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        self.ep.send_value(Kind::Message, value, fds).await
    }

    /// Sends opaque bytes, never encoded or decoded (the binary codec only).
    pub async fn send_bytes(&self, bytes: Bytes) -> Result<(), Error> {
        self.ep
            .send_frame(Frame::new(Kind::Message, Format::Raw, bytes))
            .await
    }

    /// Sends a request and waits for the reply, decoded as `R`, within the default deadline.
    pub async fn request<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        value: &T,
    ) -> Result<R, Error> {
        self.request_message(value, Vec::new(), self.request_timeout)
            .await?
            .decode()
    }

    /// Sends a request with descriptors and waits for the whole reply message within `timeout`.
    pub async fn request_message<T: Serialize + ?Sized>(
        &self,
        value: &T,
        fds: Vec<OwnedFd>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let (format, payload) = herd_wire::encode_to_send(self.codec(), value)?;
        self.ep
            .request(Kind::Request, format, payload, fds, timeout)
            .await
    }

    /// A call to the primary's cache hub (a [`Kind::CacheCall`]).
    pub(crate) async fn cache_call<T: Serialize + ?Sized>(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let (format, payload) = herd_wire::encode_to_send(self.codec(), value)?;
        self.ep
            .request(Kind::CacheCall, format, payload, Vec::new(), timeout)
            .await
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    pub(crate) async fn control(&self, c: &Control) -> Result<(), Error> {
        self.ep.send_value(Kind::Control, c, Vec::new()).await
    }
}
