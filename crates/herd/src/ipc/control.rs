//! herd's own notices between worker and primary ([`herd_wire::Kind::Control`] frames): a
//! worker's listening and ready notices, liveness pings and their answers, and the cache hub's
//! invalidation pushes. Unknown notices
//! (from a newer peer during a rolling reload) decode as [`Control::Unknown`] and are ignored.

use serde::{Deserialize, Serialize};

/// herd's own notices between worker and primary (the `Control` frames).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Control {
    /// The worker listens on an address.
    Listening {
        /// The address, as the worker prints it.
        address: String,
    },
    /// The worker is ready to take work (used by rolling reloads).
    Ready,
    /// The hub: these keys changed; drop them from the local view.
    CacheInvalidate {
        /// The keys.
        keys: Vec<String>,
        /// The hub's invalidation sequence number.
        seq: u64,
    },
    /// The hub: drop the whole local view (tracking lost or restored, everything may have
    /// changed).
    CacheClear {
        /// The hub's invalidation sequence number.
        seq: u64,
    },
    /// The primary: answer with [`Control::Pong`] (liveness; herd's workers answer from their
    /// reader task, Node workers from their event loop through herd's preload).
    Ping {
        /// Echoed in the answer.
        seq: u64,
    },
    /// The worker: the answer to [`Control::Ping`] `seq`.
    Pong {
        /// The ping's.
        seq: u64,
    },
    /// A Node worker (herd's preload): the signals its program listens for now, of those herd
    /// may stop it with (sent when they change).
    Hooks {
        /// Their names (`SIGTERM`, `SIGINT`...).
        signals: Vec<String>,
    },
    /// A Node worker (herd's preload): its program's entry file has code for Node's cluster
    /// primary (`cluster.isPrimary`, `setupMaster`...), which never runs under herd.
    PrimaryCode {
        /// The file, and what was found in it.
        file: String,
        /// What was found (`cluster.isPrimary`...).
        found: String,
    },
    /// A notice this version does not know (a newer peer during a rolling reload).
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_wire::Codec;

    /// A newer peer's notices (during a rolling reload) decode as `Unknown`, in both formats,
    /// rather than breaking the channel.
    #[test]
    fn unknown_control_notices_are_tolerated() {
        let future = serde_json::json!({"type": "drain_please", "deadline_ms": 5});
        for codec in [Codec::Binary, Codec::NodeJson] {
            let (format, bytes) = herd_wire::encode_value(codec, &future).unwrap();
            let c: Control = herd_wire::decode_value(format, &bytes).unwrap();
            assert_eq!(c, Control::Unknown, "{codec:?}");
            let (format, bytes) = herd_wire::encode_value(
                codec,
                &Control::Listening {
                    address: "0.0.0.0:80".into(),
                },
            )
            .unwrap();
            let c: Control = herd_wire::decode_value(format, &bytes).unwrap();
            assert_eq!(
                c,
                Control::Listening {
                    address: "0.0.0.0:80".into()
                }
            );
        }
        // A notice without a type is malformed, and says so.
        let (format, bytes) =
            herd_wire::encode_value(Codec::NodeJson, &serde_json::json!({"x": 1})).unwrap();
        assert!(herd_wire::decode_value::<Control>(format, &bytes).is_err());
    }
}
