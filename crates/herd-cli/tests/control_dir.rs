//! The control directory is herd's own: a directory another user made first, a plain file or
//! a symlink in its place makes herd refuse, naming the path.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use herd_test_support::process::TempDir;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// `herd run` with XDG_RUNTIME_DIR at `base`: its exit code and stderr.
fn run_in(base: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(HERD)
        .args(["run", "--", "true"])
        .env("XDG_RUNTIME_DIR", base)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_hostile_file_or_symlink_control_directory_is_refused() {
    let base = TempDir::new("control-dir");
    let dir = base.path().join("herd");
    // Another user's sticky 1777 directory.
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    rustix::fs::chown(&dir, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
    let (code, err) = run_in(base.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");
    let status = Command::new(HERD)
        .arg("status")
        .env("XDG_RUNTIME_DIR", base.path())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(2));
    std::fs::remove_dir(&dir).unwrap();
    // A plain file.
    std::fs::write(&dir, "").unwrap();
    let (code, err) = run_in(base.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a directory"), "{err}");
    std::fs::remove_file(&dir).unwrap();
    // A symlink to a directory of ours.
    let target = base.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, &dir).unwrap();
    let (code, err) = run_in(base.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
}
