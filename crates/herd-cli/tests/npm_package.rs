//! `js/` as the npm package `herd-cluster`, installed as a Node user would: `npm pack` of the
//! folder, `npm install` of the tarball (offline: it has no dependencies) into a fresh project,
//! then the real `node` requiring and importing it by name, `cache.json` under the real
//! `herd run` with a cache, and `tsc --strict` on a TypeScript program using every API
//! (`HERD_TSC`: the path of a `tsc`; `.ci/run` installs one).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

mod common;

use common::*;
use herd_test_support::process::TempDir;

const PACKAGE: &str = "herd-cluster";

fn repo_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../js")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/npm_apps")
        .join(name)
}

/// Runs `cmd` in `dir` to completion within [`DEADLINE`]; its stdout. Panics, with its output,
/// if it fails or overruns (then it is killed).
fn run(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let what = format!("{cmd} {}", args.join(" "));
    let child = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .env("npm_config_update_notifier", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            panic!("{what} did not finish within {DEADLINE:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `npm install` of `what` (a tarball or a folder) into the project `app`, offline: the
/// package has no dependencies.
fn npm_install(app: &Path, what: &Path) {
    run(
        app,
        "npm",
        &[
            "install",
            "--offline",
            "--no-audit",
            "--no-fund",
            what.to_str().unwrap(),
        ],
    );
}

/// A fresh Node project (its own package.json) in `dir`.
fn project(dir: &Path) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name": "app", "version": "1.0.0", "private": true}"#,
    )
    .unwrap();
    app
}

/// `npm pack` of js/ into `dir`, then a project in `dir/app` with the tarball installed.
fn installed_from_tarball(dir: &Path) -> PathBuf {
    let packs = dir.join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    let js = repo_js();
    run(
        &packs,
        "npm",
        &[
            "pack",
            "--pack-destination",
            packs.to_str().unwrap(),
            js.to_str().unwrap(),
        ],
    );
    let tarball = packs.join(format!("{PACKAGE}-0.1.0.tgz"));
    assert!(tarball.exists(), "npm pack made {}", tarball.display());
    let app = project(dir);
    npm_install(&app, &tarball);
    app
}

#[test]
fn the_tarball_installs_and_loads_by_name_as_commonjs_and_esm() {
    let dir = TempDir::new("npm-pack");
    let app = installed_from_tarball(dir.path());

    // What the package holds: the client, its ESM entry, its types, its README.
    let installed = app.join("node_modules").join(PACKAGE);
    let mut files: Vec<String> = std::fs::read_dir(&installed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "herd.js",
            "herd.mjs",
            "index.d.ts",
            "native.js",
            "package.json"
        ]
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("package.json")).unwrap()).unwrap();
    assert!(
        manifest["dependencies"][PACKAGE].is_string(),
        "the project depends on it: {manifest}"
    );

    for (script, ok) in [("check.cjs", "cjs-ok"), ("check.mjs", "esm-ok")] {
        std::fs::copy(fixture(script), app.join(script)).unwrap();
        let out = run(&app, "node", &[script]);
        assert_eq!(out.trim(), ok, "node {script}");
    }
}

/// Every file under `dir` with its length and modification time, recursively (symlinks as
/// themselves): what an install must leave as it was.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// From a clone of herd (`npm install <herd>/js`), npm links the folder, runs no script and
/// builds nothing: the folder is as it was. The addon comes from `herd run`
/// (`cache_json_parses_once_per_version_under_herd`).
#[test]
fn the_folder_installs_with_npm_install_path() {
    let dir = TempDir::new("npm-folder");
    let app = project(dir.path());
    let js = repo_js();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(js.join("package.json")).unwrap()).unwrap();
    assert!(
        manifest.get("scripts").is_none(),
        "no install script: {manifest}"
    );
    let before = snapshot(&js);
    npm_install(&app, &js);
    // npm links a folder it installs.
    assert_eq!(
        std::fs::canonicalize(app.join("node_modules").join(PACKAGE)).unwrap(),
        std::fs::canonicalize(&js).unwrap()
    );
    std::fs::copy(fixture("check.cjs"), app.join("check.cjs")).unwrap();
    assert_eq!(run(&app, "node", &["check.cjs"]).trim(), "cjs-ok");
    assert_eq!(snapshot(&js), before, "the install left js/ as it was");
}

/// cache.json in two Node workers of `herd run --cache-dir` (see npm_apps/cache_json.js): parsed
/// once per worker per version, the same object until the key changes, the new value parsed
/// after a set here and after an invalidation pushed from the other worker.
#[test]
fn cache_json_parses_once_per_version_under_herd() {
    cache_json_under_herd("on");
}

/// The same on the json path (Node's IPC channel), without the addon.
#[test]
fn cache_json_parses_once_per_version_on_the_json_path() {
    cache_json_under_herd("off");
}

fn cache_json_under_herd(addon: &str) {
    let dir = TempDir::new("npm-json");
    let app = installed_from_tarball(dir.path());
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("own"), r#"{"name":"first"}"#).unwrap();
    std::fs::write(cache.join("shared"), r#"{"v":1}"#).unwrap();
    let script = app.join("cache_json.js");
    std::fs::copy(fixture("cache_json.js"), &script).unwrap();

    let herd = Herd::start(
        "npm-json",
        &[
            "-w",
            "2",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--env",
            if addon == "off" {
                "HERD_NODE_ADDON=off"
            } else {
                "HERD_TEST=addon"
            },
            "--",
            "node",
            script.to_str().unwrap(),
        ],
    );
    let mut results: Vec<String> = (0..2)
        .map(|_| herd.stdout_line(|l| l.contains("json-ok ") || l.contains("json-failed ")))
        .collect();
    results.sort_by_key(|l| l.contains("json-ok 1"));
    assert!(
        results[0].ends_with(r#"json-ok 0 {"own":{"name":"second"}}"#),
        "slot 0: {results:?}"
    );
    assert!(
        results[1].ends_with(r#"json-ok 1 {"shared":{"v":2}}"#),
        "slot 1: {results:?}"
    );
}

/// `tsc --strict --noEmit` on npm_apps/usage.ts (and usage_esm.mts), which imports the installed package and uses
/// every API (and expects errors where the types must refuse): with the default (CommonJS)
/// resolution, which reads `types`, and with Node's (node16), which reads the `exports` map.
#[test]
fn the_types_pass_tsc_strict() {
    let Some(tsc) = std::env::var_os("HERD_TSC") else {
        herd_test_support::skip(
            "npm_package::the_types_pass_tsc_strict",
            "HERD_TSC is not set (the path of a tsc)",
        );
        return;
    };
    let tsc = tsc.into_string().unwrap();
    let dir = TempDir::new("npm-tsc");
    let app = installed_from_tarball(dir.path());
    for file in ["usage.ts", "usage_esm.mts", "usage_default.ts"] {
        std::fs::copy(fixture(file), app.join(file)).unwrap();
    }
    run(&app, &tsc, &["--strict", "--noEmit", "usage.ts"]);
    run(&app, &tsc, &["--strict", "--noEmit", "usage_default.ts"]);
    // The default import (js/README.md's) with TypeScript 5, which still compiles without
    // esModuleInterop (TS1192 before index.d.ts had its own default export), and with it.
    match std::env::var("HERD_TSC5") {
        Ok(tsc5) => {
            run(&app, &tsc5, &["--strict", "--noEmit", "usage_default.ts"]);
            let interop = [
                "--strict",
                "--noEmit",
                "--esModuleInterop",
                "usage_default.ts",
            ];
            run(&app, &tsc5, &interop);
        }
        Err(_) => herd_test_support::skip(
            "npm_package::the_types_pass_tsc_strict (TypeScript 5)",
            "HERD_TSC5 is not set (the path of a TypeScript 5 tsc)",
        ),
    }
    run(
        &app,
        &tsc,
        &[
            "--strict",
            "--noEmit",
            "--module",
            "node16",
            "--moduleResolution",
            "node16",
            "usage.ts",
            "usage_esm.mts",
        ],
    );
}
