//! The channel as both sides use it: [`Peer`] (sending, requests and their replies),
//! [`Message`], [`Request`] and [`Incoming`] (what is received), herd's own control notices and
//! the handshake: transport only (how a descriptor travels to a Node worker, in Node's
//! envelope and one at a time, is `node::handle_channel`'s). The bytes on the wire are the `herd-wire` crate's; this module gives them
//! meaning.

pub(crate) mod control;
pub(crate) mod endpoint;
pub(crate) mod handshake;
pub(crate) mod message;

pub use endpoint::Peer;
pub use message::{Incoming, Message, Request};

/// Gives a type that holds a [`Peer`] (through `fn peer_ref(&self) -> &Peer`) the peer's sending
/// methods as its own, so a handle sends without `Deref` (Rust API guideline C-DEREF).
macro_rules! peer_methods {
    ($t:ty) => {
        impl $t {
            /// The codec of the channel.
            pub fn codec(&self) -> herd_wire::Codec {
                self.peer_ref().codec()
            }

            /// Messages and requests sent so far.
            pub fn sent(&self) -> u64 {
                self.peer_ref().sent()
            }

            /// Whether the channel can no longer send.
            pub fn is_closed(&self) -> bool {
                self.peer_ref().is_closed()
            }

            /// Sends a value (any serde type, or a `serde_json::Value`); see [`Peer::send`](crate::Peer::send).
            pub async fn send<T: serde::Serialize + ?Sized>(
                &self,
                value: &T,
            ) -> Result<(), crate::Error> {
                self.peer_ref().send(value).await
            }

            /// Sends opaque bytes; see [`Peer::send_bytes`](crate::Peer::send_bytes).
            pub async fn send_bytes(&self, bytes: bytes::Bytes) -> Result<(), crate::Error> {
                self.peer_ref().send_bytes(bytes).await
            }

            /// Sends a request and waits for its reply; see [`Peer::request`](crate::Peer::request).
            pub async fn request<T: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned>(
                &self,
                value: &T,
            ) -> Result<R, crate::Error> {
                self.peer_ref().request(value).await
            }

            /// Sends a request with descriptors and waits for the whole reply; see
            /// [`Peer::request_message`](crate::Peer::request_message).
            pub async fn request_message<T: serde::Serialize + ?Sized>(
                &self,
                value: &T,
                fds: Vec<std::os::fd::OwnedFd>,
                timeout: std::time::Duration,
            ) -> Result<crate::Message, crate::Error> {
                self.peer_ref().request_message(value, fds, timeout).await
            }
        }
    };
}
pub(crate) use peer_methods;
