//! The cache warm-up's progress bar: on a terminal, `herd run` draws one on stderr from the
//! hub's progress reports; elsewhere the hub's log lines say the same.

use std::io::IsTerminal;
use std::sync::OnceLock;

use herd::cache::{Progress, WarmProgress};
use indicatif::{ProgressBar, ProgressStyle};

/// A bar on stderr when it is a terminal, log lines otherwise.
pub fn warm_up() -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress::Log;
    }
    // Made at the first report, which gives the number of keys.
    let bar: OnceLock<ProgressBar> = OnceLock::new();
    Progress::report(move |p: &WarmProgress| {
        let bar = bar.get_or_init(|| {
            let bar = ProgressBar::new(p.total);
            if let Ok(style) = ProgressStyle::with_template(
                "cache warm-up {bar:40} {pos}/{len} keys {per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(p.done);
        if p.finished {
            bar.finish_and_clear();
        }
    })
}
