//! docs/benchmarks.md holds one section per benchmark command, each between
//! `<!-- NAME:begin -->` and `<!-- NAME:end -->`, so each command rewrites only its own.

use std::path::Path;

use anyhow::{Context, Result};

const TITLE: &str = "# Benchmarks\n";

/// Replaces (or appends) section `name` of the document at `path` with `body`.
pub fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TITLE.to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let begin = format!("<!-- {name}:begin -->\n");
    let end = format!("<!-- {name}:end -->\n");
    let block = format!("{begin}{}\n{end}", body.trim_end());
    let new = match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n\n{block}", doc.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// `n` with thousands separators.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", &s[..]), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_or_appended() {
        let dir = std::env::temp_dir().join(format!("herd-sections-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("b.md");
        let _ = std::fs::remove_file(&p);
        write_section(&p, "a", "A1").unwrap();
        write_section(&p, "b", "B1").unwrap();
        write_section(&p, "a", "A2\n").unwrap();
        let doc = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            doc,
            "# Benchmarks\n\n<!-- a:begin -->\nA2\n<!-- a:end -->\n\n<!-- b:begin -->\nB1\n<!-- b:end -->\n"
        );
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }
}
