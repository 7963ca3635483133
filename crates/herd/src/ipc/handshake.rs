//! The handshake on a binary channel: each side sends a [`Hello`] first, and each checks the
//! other's with [`check`], the one rule for both: the first frame must be a hello, the protocol
//! majors must match (the lower minor is used), and the worker id must be the one the primary
//! gave. Node json channels have no handshake (a plain Node program sends nothing first).

use herd_wire::{Frame, Hello, Kind};

use crate::ids::WorkerId;
use crate::Error;

/// The hello this side sends to (or as) worker `worker`.
pub(crate) fn hello(worker: WorkerId) -> Hello {
    Hello::new(worker.0)
}

/// Checks the peer's first frame: a readable hello of a compatible protocol version from (or
/// for) worker `worker`. Returns the peer's hello.
pub(crate) fn check(first: Frame, worker: WorkerId) -> Result<Hello, Error> {
    if first.kind != Kind::Hello {
        return Err(Error::Handshake(format!(
            "first frame is {:?}, not a hello",
            first.kind
        )));
    }
    let theirs: Hello = herd_wire::decode_value(first.format, &first.payload)
        .map_err(|e| Error::Handshake(format!("unreadable hello: {e}")))?;
    hello(worker)
        .negotiate(&theirs)
        .map_err(|e| Error::Handshake(e.to_string()))?;
    if theirs.worker_id != worker.0 {
        return Err(Error::Handshake(format!(
            "worker ids differ: this side says {worker}, the other side says {}",
            theirs.worker_id
        )));
    }
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_wire::{Codec, Frame};

    fn frame(kind: Kind, value: &impl serde::Serialize) -> Frame {
        let (format, payload) = herd_wire::encode_value(Codec::Binary, value).unwrap();
        Frame::new(kind, format, payload)
    }

    #[test]
    fn a_matching_hello_passes_and_anything_else_is_refused() {
        let w = WorkerId(7);
        assert!(check(frame(Kind::Hello, &hello(w)), w).is_ok());
        let wrong_id = check(frame(Kind::Hello, &hello(WorkerId(8))), w).unwrap_err();
        assert!(
            wrong_id.to_string().contains("the other side says 8"),
            "{wrong_id}"
        );
        let not_hello = check(frame(Kind::Message, &"hi"), w).unwrap_err();
        assert!(not_hello.to_string().contains("not a hello"), "{not_hello}");
        let garbage = check(frame(Kind::Hello, &"hi"), w).unwrap_err();
        assert!(
            garbage.to_string().contains("unreadable hello"),
            "{garbage}"
        );
        let mut future = hello(w);
        future.major += 1;
        assert!(check(frame(Kind::Hello, &future), w).is_err());
    }
}
