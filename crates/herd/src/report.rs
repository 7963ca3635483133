//! [`chain`]: an error with its sources on one line, for logs and for texts that cross the
//! channel. Below [`crate::error`] and the cache's errors alike, so both can use it.

/// Formats an error with its chain of sources, `a: b: c`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
