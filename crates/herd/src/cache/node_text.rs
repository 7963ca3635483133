//! A big value's reply to Node-json workers, made once and shared by every reply of it: the
//! JSON text of a value (its escaped string, or base64) is as big as the value, and making it
//! for each call cost a pass over the value and a copy per reply in flight. The part of a
//! reply that is the same for every call of one value (`{"found":true,"value":"…"`, with its
//! `encoding`) is kept here for the values whose text is longer than
//! [`SHARE_ABOVE`], at most [`MAX_TEXT_BYTES`] of texts and the values they were made of,
//! least recently used first out; each reply adds its own few bytes (`ttl_ms`, `seq`,
//! `local`, `stale`) as its frame's trailer ([`herd_wire::Frame::with_trailer`]).
//!
//! A text is found by the value it was made of: the address and length of the value's bytes,
//! which the slot holds a reference to (so that no other value can come to lie there while the
//! slot lives). A value replaced in the hub makes new bytes, so a new text; the old one ages
//! out. Calls that want a text being made wait for it rather than make it again
//! (`OnceCell`: cancel-safe, a dropped maker lets the next waiter make it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::OnceCell;

use super::proto::NodeText;

/// Values whose Node text is at most this long are encoded for each reply (cheaper than a
/// lookup here).
pub(crate) const SHARE_ABOVE: usize = 64 << 10;

/// Bytes of shared texts kept, with the values they hold on to (a value the hub has let go of
/// stays alive while its text is kept): the whole process's, for every worker. A value whose
/// text and bytes together pass half of it is encoded for each reply, as a small one is.
pub(crate) const MAX_TEXT_BYTES: usize = 256 << 20;

/// One value's shared reply part, once made.
pub(crate) struct Slot {
    /// The value it is made of, held so that its address stays its own.
    value: Bytes,
    text: OnceCell<Bytes>,
    /// What it is charged against [`MAX_TEXT_BYTES`].
    charge: usize,
}

impl Slot {
    /// The shared part of the value's reply: made by the first caller (on a blocking thread,
    /// through `off_runtime`), waited for by the others.
    pub(crate) async fn text<F, Fut>(&self, make: F) -> Result<Bytes, crate::Error>
    where
        F: FnOnce(Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, crate::Error>>,
    {
        let value = self.value.clone();
        self.text.get_or_try_init(|| make(value)).await.cloned()
    }
}

type Key = (usize, usize);

#[derive(Default)]
struct Texts {
    slots: HashMap<Key, Arc<Slot>>,
    /// Least recently used first.
    order: VecDeque<Key>,
    bytes: usize,
}

fn texts() -> &'static Mutex<Texts> {
    static TEXTS: OnceLock<Mutex<Texts>> = OnceLock::new();
    TEXTS.get_or_init(Mutex::default)
}

/// The shared part of `value`'s reply, if it is made already (no pass over the value).
pub(crate) fn made(value: &Bytes) -> Option<Bytes> {
    if value.len() <= SHARE_ABOVE / 2 {
        return None;
    }
    let key = (value.as_ptr() as usize, value.len());
    let mut t = texts().lock().unwrap_or_else(|p| p.into_inner());
    let text = t.slots.get(&key)?.text.get()?.clone();
    touch(&mut t, key);
    Some(text)
}

fn touch(t: &mut Texts, key: Key) {
    if let Some(at) = t.order.iter().position(|k| *k == key) {
        t.order.remove(at);
    }
    t.order.push_back(key);
}

/// The slot for `value`, whose Node text is `text_len` bytes: found, or made (evicting the
/// least recently used past [`MAX_TEXT_BYTES`]). `None` for a value too small or too big to be
/// shared.
pub(crate) fn slot(value: &Bytes, text_len: usize) -> Option<Arc<Slot>> {
    let charge = value.len().saturating_add(text_len).saturating_add(64);
    if text_len <= SHARE_ABOVE || charge > MAX_TEXT_BYTES / 2 {
        return None;
    }
    let key = (value.as_ptr() as usize, value.len());
    let mut t = texts().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(slot) = t.slots.get(&key).cloned() {
        touch(&mut t, key);
        return Some(slot);
    }
    while t.bytes + charge > MAX_TEXT_BYTES {
        let Some(old) = t.order.pop_front() else {
            break;
        };
        if let Some(s) = t.slots.remove(&old) {
            t.bytes -= s.charge;
        }
    }
    let slot = Arc::new(Slot {
        value: value.clone(),
        text: OnceCell::new(),
        charge,
    });
    t.bytes += charge;
    t.slots.insert(key, slot.clone());
    t.order.push_back(key);
    Some(slot)
}

/// The part of a found value's reply that every call shares: `{"found":true,"value":TEXT`, and
/// `,"encoding":"base64"` for a value that is not UTF-8 (the reply's object is left open for
/// [`trailer`]).
pub(crate) fn shared_part(value: &[u8]) -> Bytes {
    let text = NodeText::of(value);
    let json = text.json.get();
    let mut out = Vec::with_capacity(json.len() + 48);
    out.extend_from_slice(b"{\"found\":true,\"value\":");
    out.extend_from_slice(json.as_bytes());
    if let Some(enc) = text.encoding {
        out.extend_from_slice(b",\"encoding\":\"");
        out.extend_from_slice(enc.as_bytes());
        out.push(b'"');
    }
    Bytes::from(out)
}

/// What one reply adds after [`shared_part`]: its own fields, closing the object.
#[derive(Serialize)]
pub(crate) struct Own {
    pub(crate) ttl_ms: Option<u64>,
    pub(crate) seq: u64,
    pub(crate) local: bool,
    pub(crate) stale: bool,
}

/// `own` as the end of a reply whose start is a [`shared_part`]: `,"ttl_ms":…}`.
pub(crate) fn trailer(own: &Own) -> Bytes {
    let mut out = serde_json::to_vec(own).expect("plain fields always serialize");
    out[0] = b',';
    Bytes::from(out)
}

/// Bytes of shared texts kept now (for tests).
#[cfg(test)]
fn kept() -> usize {
    texts().lock().unwrap().bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::proto::NodeGetReply;

    /// The two parts read as the reply encoded whole would (the same fields, the same values),
    /// for text and for bytes that are not UTF-8.
    #[test]
    fn a_shared_part_and_a_trailer_make_the_whole_reply() {
        for value in [&b"caf\xc3\xa9 \"quoted\"\n\x01"[..], &b"\xff\xfe bytes"[..]] {
            let own = Own {
                ttl_ms: Some(1500),
                seq: 42,
                local: true,
                stale: false,
            };
            let parts = [&shared_part(value)[..], &trailer(&own)[..]].concat();
            let text = NodeText::of(value);
            let whole = serde_json::to_vec(&NodeGetReply {
                found: true,
                value: Some(&text.json),
                encoding: text.encoding,
                ttl_ms: own.ttl_ms,
                seq: own.seq,
                local: own.local,
                stale: own.stale,
            })
            .unwrap();
            let a: serde_json::Value = serde_json::from_slice(&parts).unwrap();
            let b: serde_json::Value = serde_json::from_slice(&whole).unwrap();
            assert_eq!(a, b);
            assert!(!parts.contains(&b'\n'), "one line");
        }
        let none = trailer(&Own {
            ttl_ms: None,
            seq: 0,
            local: false,
            stale: true,
        });
        assert_eq!(
            &none[..],
            b",\"ttl_ms\":null,\"seq\":0,\"local\":false,\"stale\":true}"
        );
    }

    /// One slot per value, found again by the same bytes, not by equal ones; the kept bytes
    /// stay under the bound however many values come, and small or huge values get none.
    #[tokio::test]
    async fn texts_are_found_by_their_value_and_bounded_in_bytes() {
        let a = Bytes::from(vec![b'a'; 1 << 20]);
        let len = a.len() + 2;
        let s1 = slot(&a, len).unwrap();
        let s2 = slot(&a.clone(), len).unwrap();
        assert!(Arc::ptr_eq(&s1, &s2), "the same bytes find the same slot");
        let equal = Bytes::from(vec![b'a'; 1 << 20]);
        assert!(!Arc::ptr_eq(&s1, &slot(&equal, len).unwrap()));
        let made = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..2 {
            let t = s1
                .text(|v| {
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move { Ok(shared_part(&v)) }
                })
                .await
                .unwrap();
            assert!(t.starts_with(b"{\"found\":true,\"value\":\"aaa"));
        }
        assert_eq!(made.into_inner(), 1, "made once");
        assert_eq!(
            super::made(&a).unwrap(),
            s1.text(|_| async { unreachable!() }).await.unwrap()
        );
        assert!(super::made(&equal).is_none(), "not made for equal bytes");
        assert!(
            slot(&Bytes::from(vec![b'b'; 1000]), 1002).is_none(),
            "small"
        );
        let huge = Bytes::from(vec![b'c'; MAX_TEXT_BYTES / 2]);
        assert!(slot(&huge, huge.len() + 2).is_none(), "too big to keep");
        for _ in 0..100 {
            let v = Bytes::from(vec![b'd'; 3 << 20]);
            slot(&v, v.len() + 2).unwrap();
            assert!(kept() <= MAX_TEXT_BYTES);
        }
    }
}
