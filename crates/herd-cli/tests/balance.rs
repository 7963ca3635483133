//! How herd spreads connections among ordinary Node servers, and what clients see while workers
//! come and go. The servers are unmodified (`http.createServer().listen(PORT)`, no cluster or
//! shutdown code), the clients are real concurrent TCP clients, and every response is checked.
//!
//! With one shared listening socket (Node's shared handles), a worker told to disconnect runs
//! `server.close()`, which since Node 19 destroys the server's idle keep-alive connections,
//! including ones whose next request has arrived but is not read yet: keep-alive clients see
//! resets during reloads. Whichever worker wakes first accepts, so the load is uneven, and a
//! worker at its `maxConnections` accepts a connection only to close it. With `--balance rr`
//! herd accepts the connections itself and hands each to the next worker with Node's `newconn`
//! message: a retiring worker gets no new connection once it is to be told to disconnect, and a
//! connection a worker refuses (`accepted: false`) or never took goes to another worker.
//!
//! The clients read with a timeout ([`IO_TIMEOUT`]), every wait has a deadline, and the load
//! runs only as long as the reloads, scale changes or kills it accompanies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::http::*;
use common::*;

/// How herd balances connections in these tests, unless a test names the mode.
const BALANCE: &str = "rr";

/// Concurrent clients.
const CLIENTS: usize = 4;

/// Rolling reloads in the reload tests.
const RELOADS: usize = 10;

fn app(name: &str) -> String {
    balance_app(name)
}

/// `herd run -w N` of the app `script` balanced by [`BALANCE`], once every worker said it
/// listens and the status shows them running; the address to reach them at.
fn serve(name: &str, script: &str, workers: usize) -> (Herd, SocketAddr) {
    serve_with("node", BALANCE, name, script, workers)
}

/// [`serve`] with the Node executable `node`, balanced by `balance`.
fn serve_with(
    node: &str,
    balance: &str,
    name: &str,
    script: &str,
    workers: usize,
) -> (Herd, SocketAddr) {
    serve_command(balance, name, &[node, &app(script)], workers)
}

/// [`serve_with`] of the command `command` (a program that runs a server listening on `PORT`).
fn serve_command(
    balance: &str,
    name: &str,
    command: &[&str],
    workers: usize,
) -> (Herd, SocketAddr) {
    serve_port(name, &["--balance", balance], command, workers)
}

/// [`CLIENTS`] threads, each making one request after another on a new connection.
fn new_connection_load(addr: SocketAddr, tally: &Arc<Tally>) -> Load {
    let tally = tally.clone();
    Load::start(CLIENTS, move |_, _| tally.record(get_once(addr, "/")))
}

/// Waits until `ok()` passes `at_least`, within the deadline.
fn until_ok(tally: &Tally, at_least: u64, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while tally.ok() < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} requests succeeded, {} failed ({:?}), never {at_least}",
            tally.ok(),
            tally.failed(),
            tally.reasons()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `herd reload`, which answers once the reload is done; then every worker is running.
fn reload(herd: &Herd, workers: usize) {
    let out = herd.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "herd reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    herd.status_until("the reload's workers running", |s| {
        running(s) == workers && !s.status.reloading
    });
}

/// `herd scale N`, then waits until exactly N workers are listed, all running.
fn scale(herd: &Herd, n: usize) {
    let out = herd.ctl(&["scale", &n.to_string()]);
    assert!(
        out.status.success(),
        "herd scale {n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    herd.status_until(&format!("{n} workers running"), |s| {
        running(s) == n && workers(s) == n
    });
}

/// A reload or a scale change.
#[derive(Clone, Copy, Debug)]
enum Change {
    Reload,
    Scale(usize),
}

/// 4 clients opening a new connection per request never see one fail while herd reloads its
/// workers 10 times and changes their number 5 times (2 -> 3 -> 2 -> 4 -> 2 -> 3), each change
/// awaited; requests succeed during every reload and after every change. herd must hand no
/// connection to a worker that is about to disconnect, and re-hand any a retiring or exiting
/// worker never took.
#[test]
fn reloads_and_scaling_fail_no_request_with_new_connections() {
    let started = Instant::now();
    let (herd, addr) = serve("balance-reload-new", "server.js", 2);
    let tally = Arc::new(Tally::default());
    let load = new_connection_load(addr, &tally);
    until_ok(&tally, 20, "before the first reload");
    // Five times: a reload, a scale change, a reload.
    let sizes = [3, 2, 4, 2, 3];
    let plan: Vec<Change> = sizes
        .iter()
        .flat_map(|&n| [Change::Reload, Change::Scale(n), Change::Reload])
        .collect();
    let mut workers = 2;
    for (i, &change) in plan.iter().enumerate() {
        let before = tally.ok();
        match change {
            Change::Reload => reload(&herd, workers),
            Change::Scale(n) => {
                scale(&herd, n);
                workers = n;
            }
        }
        if matches!(change, Change::Reload) {
            assert!(
                tally.ok() > before,
                "no request succeeded during reload {i} ({} failed: {:?})",
                tally.failed(),
                tally.reasons()
            );
        }
        until_ok(
            &tally,
            tally.ok() + 2 * CLIENTS as u64,
            &format!("after {change:?}"),
        );
    }
    let (_, _) = load.stop();
    let (ok, failed) = (tally.ok(), tally.failed());
    eprintln!(
        "new connections, {RELOADS} reloads and {} scale changes (balance {BALANCE}): \
         {ok} ok, {failed} failed in {:?}; first failures: {:?}",
        sizes.len(),
        started.elapsed(),
        tally.reasons()
    );
    assert_eq!(
        plan.iter().filter(|c| matches!(c, Change::Reload)).count(),
        RELOADS
    );
    assert_eq!(failed, 0, "failed requests: {:?}", tally.reasons());
    assert!(ok > 500, "only {ok} requests succeeded");
    stop(herd);
}

/// 4 keep-alive clients (requests one after another on one connection each; two of them never
/// pause between requests, two pause 1-5 ms every 10th request) never see a request fail while
/// herd reloads its workers 10 times. A server closing the connection cleanly between two
/// requests is ordinary HTTP (the client opens a new one); a reset, an end or a timeout after a
/// request was sent is a failure. With the shared socket, reloads fail requests: the retiring
/// worker's `server.close()` destroys idle keep-alive connections, including ones whose next
/// request it has not read yet.
#[test]
fn reloads_fail_no_request_with_keep_alive_clients() {
    keep_alive_reloads("node", "rr", "server.js");
}

/// The same with every worker accepting on the shared socket (herd's default): a retiring
/// worker's connections are held and handed on all the same.
#[test]
fn shared_socket_reloads_fail_no_request_with_keep_alive_clients() {
    keep_alive_reloads("node", "shared", "server.js");
}

/// 10 reloads under new-connection clients with the shared socket: none fails.
#[test]
fn shared_socket_reloads_fail_no_request_with_new_connections() {
    new_connection_reloads("node", "shared");
}

/// Node's `server.close()` differs by version (18 leaves idle keep-alive connections open until
/// their timeout; 19 and later destroy them at once): the reload tests, keep-alive and new
/// connections, with every Node named in `HERD_TEST_NODES` (paths to `node` executables,
/// separated by `:`; `.ci/run` installs 18 and 22 from the npm registry and names them). Without
/// it, only the machine's `node` is tested (by the other tests), and this says so.
#[test]
fn reloads_fail_no_request_on_other_node_versions() {
    let nodes = std::env::var("HERD_TEST_NODES").unwrap_or_default();
    let nodes: Vec<&str> = nodes.split(':').filter(|n| !n.is_empty()).collect();
    if nodes.is_empty() {
        herd_test_support::skip(
            "balance::reloads_fail_no_request_on_other_node_versions",
            "HERD_TEST_NODES is not set: no other Node version tested",
        );
        return;
    }
    for node in nodes {
        let version = std::process::Command::new(node)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("HERD_TEST_NODES names {node}, which does not run: {e}"));
        eprintln!("Node {}", String::from_utf8_lossy(&version.stdout).trim());
        keep_alive_reloads(node, "rr", "server.js");
        keep_alive_reloads(node, "shared", "server.js");
        // Requests that take a while: a worker retiring with one in progress finishes it.
        keep_alive_reloads(node, "shared", "slow.js");
        new_connection_reloads(node, "shared");
    }
}

/// 10 reloads under 4 new-connection clients with the Node executable `node`: none fails.
fn new_connection_reloads(node: &str, balance: &str) {
    let (herd, addr) = serve_with(node, balance, "balance-reload-new-2", "server.js", 2);
    let tally = Arc::new(Tally::default());
    let load = new_connection_load(addr, &tally);
    until_ok(&tally, 20, "before the first reload");
    for _ in 0..RELOADS {
        reload(&herd, 2);
        until_ok(&tally, tally.ok() + 2 * CLIENTS as u64, "after a reload");
    }
    let (_, _) = load.stop();
    let (ok, failed) = (tally.ok(), tally.failed());
    eprintln!("{node}: new connections, {RELOADS} reloads ({balance}): {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "{node}: failed requests: {:?}", tally.reasons());
    stop(herd);
}

/// The keep-alive reload test with the Node executable `node` running `script`, balanced by
/// `balance`.
fn keep_alive_reloads(node: &str, balance: &str, script: &str) {
    let started = Instant::now();
    let (herd, addr) = serve_with(node, balance, "balance-reload-keepalive", script, 2);
    let tally = Arc::new(Tally::default());
    let clients: Arc<Vec<Mutex<KeepAlive>>> = Arc::new(
        (0..CLIENTS)
            .map(|_| Mutex::new(KeepAlive::new(addr)))
            .collect(),
    );
    let load = {
        let (tally, clients) = (tally.clone(), clients.clone());
        Load::start(CLIENTS, move |c, round| {
            // Clients 0 and 1 never pause; 2 and 3 pause 1 to 5 ms every 10th request.
            if c >= 2 && round % 10 == 0 {
                std::thread::sleep(Duration::from_millis(1 + (round / 10) % 5));
            }
            tally.record(clients[c].lock().unwrap().get())
        })
    };
    until_ok(&tally, 20, "before the first reload");
    for i in 0..RELOADS {
        let before = tally.ok();
        reload(&herd, 2);
        assert!(
            tally.ok() > before,
            "no request succeeded during reload {i} ({} failed: {:?})",
            tally.failed(),
            tally.reasons()
        );
        until_ok(&tally, tally.ok() + 2 * CLIENTS as u64, "after a reload");
    }
    // The load goes on until every retired worker has exited. One whose clients keep their
    // connections busy (Node 18's `server.close()` leaves them open, later ones those that were
    // busy when it closed) would live to its grace period (5 s) and take the request it was
    // answering; herd ends it once it has answered them (after half its grace period, 2.5 s).
    let last_reload = Instant::now();
    for i in 0..2 * RELOADS {
        wait_line(
            &herd.err,
            |l| l.contains("worker retired"),
            &format!("retired worker {i} exiting"),
        );
    }
    let retiring = last_reload.elapsed();
    until_ok(
        &tally,
        tally.ok() + 2 * CLIENTS as u64,
        "after the last exit",
    );
    let (_, _) = load.stop();
    let reconnects: u64 = clients.iter().map(|c| c.lock().unwrap().reconnects).sum();
    // Close the clients' connections before stopping: a graceful stop waits for them.
    clients.iter().for_each(|c| c.lock().unwrap().conn = None);
    let (ok, failed) = (tally.ok(), tally.failed());
    eprintln!(
        "{node} {script}: keep-alive, {RELOADS} reloads (balance {balance}): {ok} ok, {failed} failed, \
         {reconnects} clean reconnects in {:?} (the last retirements {retiring:?}); first \
         failures: {:?}",
        started.elapsed(),
        tally.reasons()
    );
    assert_eq!(failed, 0, "failed requests: {:?}", tally.reasons());
    assert!(
        retiring < Duration::from_millis(4500),
        "the last reload's workers took {retiring:?} to go: not ended once they had answered"
    );
    // slow.js takes 20 ms a request: its 4 clients make at most 200 a second.
    let least = if script == "slow.js" { 100 } else { 500 };
    assert!(ok > least, "only {ok} requests succeeded");
    stop(herd);
}

/// 400 requests on new connections from 4 threads to 2 workers: each worker answers about half
/// (the busier at most 55%), where a shared socket lets whichever worker wakes first take most.
#[test]
fn round_robin_spreads_connections_evenly() {
    const REQUESTS: usize = 400;
    let (herd, addr) = serve("balance-even", "server.js", 2);
    let tally = Tally::default();
    std::thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                for _ in 0..REQUESTS / CLIENTS {
                    tally.record(get_once(addr, "/"));
                }
            });
        }
    });
    let by_pid = tally.by_pid();
    let busiest = by_pid.values().copied().max().unwrap_or(0);
    eprintln!(
        "{REQUESTS} requests to 2 workers (balance {BALANCE}): {by_pid:?}, {} failed {:?}",
        tally.failed(),
        tally.reasons()
    );
    assert_eq!(tally.failed(), 0, "{:?}", tally.reasons());
    assert_eq!(by_pid.len(), 2, "answers by pid: {by_pid:?}");
    assert!(
        busiest * 100 <= REQUESTS as u64 * 55,
        "the busier worker answered {busiest} of {REQUESTS}: {by_pid:?}"
    );
    stop(herd);
}

/// A worker out of descriptors (`ulimit -n 32`, filled by open connections) cannot take a
/// connection herd hands it: the kernel cuts the descriptor from the message and Node answers
/// `NODE_HANDLE_NACK`. herd gives that connection to the other worker, so every request is
/// answered, where an answer that never comes would leave its client waiting for good.
#[test]
fn a_worker_out_of_descriptors_hands_connections_to_another() {
    const BATCH: usize = 20;
    const MOST: usize = 400;
    let script = app("server.js");
    let wrapper =
        format!("if [ \"$HERD_WORKER_ID\" = 1 ]; then ulimit -n 32; fi; exec node {script}");
    let (herd, addr) = serve_command("rr", "balance-emfile", &["sh", "-c", &wrapper], 2);
    // Batches of connections, kept open, each asked once, until the first worker has run out
    // of descriptors (herd says so: a lost handle) and one batch more.
    let tally = Tally::default();
    let mut conns = Vec::new();
    let mut ran_out = false;
    let mut more = 2;
    while more > 0 && conns.len() < MOST {
        let batch: Vec<_> = (0..BATCH)
            .map(|_| connect(addr).expect("connect"))
            .collect();
        conns.extend(batch);
        let start = conns.len() - BATCH;
        for conn in conns[start..].iter_mut() {
            tally.record(ask(conn).and_then(|r| pid_of(&r)));
        }
        ran_out |= herd.err.try_iter().any(|l| l.contains("NODE_HANDLE_NACK"));
        if ran_out {
            more -= 1;
        }
    }
    eprintln!(
        "{} connections, each asked once: {:?} by pid, {} failed {:?}",
        conns.len(),
        tally.by_pid(),
        tally.failed(),
        tally.reasons()
    );
    assert_eq!(tally.failed(), 0, "{:?}", tally.reasons());
    assert!(
        ran_out,
        "the first worker never ran out of descriptors: nothing was tested"
    );
    drop(conns);
    stop(herd);
}

/// Two workers that each take one connection at a time (`server.maxConnections = 1`): while
/// one is busy with a slow request (1 s), requests on new connections one after another all
/// succeed, answered by the other worker: the busy worker refuses what herd hands it (Node's
/// `accepted: false`) and herd hands it to the other. On a shared socket the busy worker
/// accepts connections and Node closes them at once.
#[test]
fn a_full_worker_hands_connections_to_another() {
    const ROUNDS: usize = 2;
    let (herd, addr) = serve("balance-full", "one_at_a_time.js", 2);
    let tally = Tally::default();
    let mut wrong_worker = Vec::new();
    for round in 0..ROUNDS {
        let slow_done = AtomicBool::new(false);
        let (slow, fast) = std::thread::scope(|scope| {
            let slow = scope.spawn(|| {
                let answer = get_once(addr, "/slow");
                let at = Instant::now();
                slow_done.store(true, Ordering::Relaxed);
                (answer, at)
            });
            // The slow request holds a worker's one connection from here on.
            herd.stdout_line(|l| l.contains("slow request started"));
            let deadline = Instant::now() + DEADLINE;
            let mut fast = Vec::new();
            while !slow_done.load(Ordering::Relaxed) {
                assert!(Instant::now() < deadline, "the slow request never ended");
                fast.push((get_once(addr, "/"), Instant::now()));
            }
            (slow.join().unwrap(), fast)
        });
        let (slow_answer, slow_at) = slow;
        let slow_pid = slow_answer.unwrap_or_else(|e| panic!("the slow request: {e}"));
        for (answer, at) in fast.iter() {
            // Answers well before the slow one ended came while its worker was full.
            if let Ok(pid) = answer {
                if *pid == slow_pid && *at + Duration::from_millis(100) < slow_at {
                    wrong_worker.push(round);
                }
            }
        }
        eprintln!(
            "round {round}: slow request on {slow_pid}; {} requests meanwhile, {} failed",
            fast.len(),
            fast.iter().filter(|(a, _)| a.is_err()).count()
        );
        assert!(
            fast.len() >= 10,
            "only {} requests during the slow one",
            fast.len()
        );
        for (answer, _) in fast {
            tally.record(answer);
        }
    }
    eprintln!(
        "a full worker (balance {BALANCE}): {} ok, {} failed, by pid {:?}; first failures: {:?}",
        tally.ok(),
        tally.failed(),
        tally.by_pid(),
        tally.reasons()
    );
    assert_eq!(tally.failed(), 0, "failed requests: {:?}", tally.reasons());
    assert!(
        wrong_worker.is_empty(),
        "the full worker answered new connections in rounds {wrong_worker:?}"
    );
    stop(herd);
}

/// A worker killed with SIGKILL under load (4 clients, a new connection per request): requests
/// keep succeeding, at most the 4 the worker was in the middle of fail (connections herd had
/// handed it but it had not taken go to the other worker), and the worker herd starts in its
/// place serves again.
#[test]
fn connections_queued_for_a_killed_worker_go_to_another() {
    let (herd, addr) = serve("balance-kill", "server.js", 2);
    let tally = Arc::new(Tally::default());
    let load = new_connection_load(addr, &tally);
    until_ok(&tally, 50, "before the kill");
    let before = herd.status();
    let victim = *tally.by_pid().keys().next().unwrap();
    assert!(pids(&before).contains(&victim), "{victim} is not a worker");
    let ok_at_kill = tally.ok();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let after = herd.status_until("a new worker in the killed one's place", |s| {
        running(s) == 2 && !pids(s).contains(&victim)
    });
    let new = *pids(&after)
        .iter()
        .find(|p| !pids(&before).contains(p))
        .expect("a new worker");
    let deadline = Instant::now() + DEADLINE;
    while tally.by_pid().get(&new).copied().unwrap_or(0) < 10 {
        assert!(
            Instant::now() < deadline,
            "the new worker {new} never served: {:?}",
            tally.by_pid()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    until_ok(&tally, tally.ok() + 2 * CLIENTS as u64, "after the restart");
    let (_, _) = load.stop();
    let (ok, failed) = (tally.ok(), tally.failed());
    eprintln!(
        "kill -9 under load (balance {BALANCE}): {ok} ok ({} after the kill), {failed} failed, \
         by pid {:?}; failures: {:?}",
        ok - ok_at_kill,
        tally.by_pid(),
        tally.reasons()
    );
    assert!(
        failed <= CLIENTS as u64,
        "{failed} requests failed: {:?}",
        tally.reasons()
    );
    stop(herd);
}
