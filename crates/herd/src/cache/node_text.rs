//! A big value's reply to Node-json workers, made once and shared by every reply of it: the
//! JSON text of a value (its escaped string, or base64) is as big as the value, and making it
//! for each call cost a pass over the value and a copy per reply in flight. The part of a
//! reply that is the same for every call of one value (`{"found":true,"value":"…"`, with its
//! `encoding`) is kept with the value itself, for values the hub keeps in a sealed memfd (those
//! over `CacheConfig::share_above`, 64 KiB by default): a [`TextCell`] in its `SharedValue`, so
//! the text lives exactly as long as the value (an evicted, deleted or replaced value takes its
//! text with it). Each reply adds its own few bytes (`ttl_ms`, `seq`, `local`, `stale`) as its
//! frame's trailer ([`herd_wire::Frame::with_trailer`]).
//!
//! The texts kept are at most [`MAX_TEXT_BYTES`] for the whole process: past it a value's
//! reply is made for each call, as a smaller value's is. Calls that want a text being made
//! wait for it rather than make it again (`OnceCell`: cancel-safe, a dropped maker lets the
//! next waiter make it).

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::OnceCell;

use super::proto::NodeText;

/// Bytes of texts kept with their values, for the whole process.
pub(crate) const MAX_TEXT_BYTES: usize = 256 << 20;

/// Bytes of texts kept now.
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// A value's shared reply part, made at most once, charged against [`MAX_TEXT_BYTES`] while
/// the value lives.
#[derive(Default)]
pub(crate) struct TextCell {
    text: OnceCell<Bytes>,
}

/// Why a text was not kept.
pub(crate) enum NotKept {
    /// The texts kept are at their bound: make this reply's own.
    Full,
    /// Making it failed.
    Failed(crate::Error),
}

impl TextCell {
    /// The shared part, if made already.
    pub(crate) fn made(&self) -> Option<Bytes> {
        self.text.get().cloned()
    }

    /// The shared part of the reply of `value`, whose Node text is `text_len` bytes: made by
    /// the first caller with `make` (on a blocking thread, through `off_runtime`), waited for
    /// by the others. [`NotKept::Full`] when the process keeps [`MAX_TEXT_BYTES`] already.
    pub(crate) async fn text<F, Fut>(
        &self,
        value: Bytes,
        text_len: usize,
        make: F,
    ) -> Result<Bytes, NotKept>
    where
        F: FnOnce(Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, crate::Error>>,
    {
        let charge = text_len.saturating_add(64);
        self.text
            .get_or_try_init(|| async move {
                let kept = KEPT.fetch_add(charge, Ordering::Relaxed);
                if kept.saturating_add(charge) > MAX_TEXT_BYTES {
                    KEPT.fetch_sub(charge, Ordering::Relaxed);
                    return Err(NotKept::Full);
                }
                // Given back on failure; the cell's drop gives back what it keeps.
                let made = make(value).await;
                let made = made.map_err(NotKept::Failed);
                match &made {
                    Ok(text) => {
                        KEPT.fetch_add(text.len(), Ordering::Relaxed);
                        KEPT.fetch_sub(charge, Ordering::Relaxed);
                    }
                    Err(_) => {
                        KEPT.fetch_sub(charge, Ordering::Relaxed);
                    }
                }
                made
            })
            .await
            .cloned()
    }
}

impl Drop for TextCell {
    fn drop(&mut self) {
        if let Some(text) = self.text.get() {
            KEPT.fetch_sub(text.len(), Ordering::Relaxed);
        }
    }
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

/// Bytes of texts kept now (for tests).
#[cfg(test)]
pub(crate) fn kept() -> usize {
    KEPT.load(Ordering::Relaxed)
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

    /// A text is made once, kept while its cell lives and given back with it; past the bound
    /// none is kept. (One test: the count is the process's.)
    #[tokio::test]
    async fn a_text_is_made_once_and_charged_while_its_value_lives() {
        let value = Bytes::from(vec![b'a'; 1 << 20]);
        let cell = TextCell::default();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let before = kept();
        for _ in 0..3 {
            let t = cell
                .text(value.clone(), value.len() + 2, |v| {
                    made.fetch_add(1, Ordering::Relaxed);
                    async move { Ok(shared_part(&v)) }
                })
                .await
                .ok()
                .unwrap();
            assert!(t.starts_with(b"{\"found\":true,\"value\":\"aaa"));
        }
        assert_eq!(made.load(Ordering::Relaxed), 1, "made once");
        assert_eq!(cell.made().unwrap().len(), kept() - before);
        drop(cell);
        assert_eq!(kept(), before, "given back with its value");

        let huge = TextCell::default();
        let r = huge
            .text(Bytes::new(), MAX_TEXT_BYTES, |_| async { unreachable!() })
            .await;
        assert!(matches!(r, Err(NotKept::Full)), "past the bound");
        assert!(huge.made().is_none());
        assert_eq!(kept(), before, "nothing kept for it");
    }
}
