//! The physical floor of a round trip between two processes over a Unix socketpair, for
//! bench/scripts/node_cache.sh (the Node-side cache benchmark).
//!
//! ```text
//!   socketpair rtt [N]   Rust <-> Rust: this process and a child of the same binary (the child
//!                        echoes on the socketpair it got as stdin); N 16-byte ping-pongs after a
//!                        warm-up, blocking reads and writes. Prints one JSON line:
//!                        {"rtt_us_med": .., "rtt_us_p99": .., "n": N}
//!   socketpair rtt N tokio [spin]
//!                        the same against an echo that is a task on tokio's multi-threaded
//!                        runtime; with `spin`, this side reads without blocking, in a loop that
//!                        yields the CPU between reads, as herd's Node addon reads a miss's reply
//!                        (crates/herd-node/src/spin.rs)
//!   socketpair echo      the echo child: reads 16-byte messages on stdin, writes each back on
//!                        stdout, until end of file. Node's `child_process.spawn` with
//!                        `stdio: 'pipe'` gives it socketpairs (bench/node/socket_pingpong.js).
//! ```

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use herd_bench::figures::median;

/// One message: what the IPC benchmark's ping-pong sends.
const FRAME: usize = 16;
const WARMUP: usize = 2_000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("rtt") => {
            let n = match args.get(2) {
                Some(s) => s.parse().context("N: a count")?,
                None => 100_000,
            };
            rtt(n)
        }
        Some("echo") => echo(),
        Some("echo-tokio") => echo_tokio(),
        _ => bail!(
            "usage: socketpair rtt [N] [tokio] [spin] | socketpair echo | socketpair echo-tokio"
        ),
    }
}

fn rtt(n: usize) -> Result<()> {
    let (mut sock, theirs) = UnixStream::pair()?;
    let rest: Vec<String> = std::env::args().skip(3).collect();
    let echo = if rest.iter().any(|a| a == "tokio") {
        "echo-tokio"
    } else {
        "echo"
    };
    let spin = rest.iter().any(|a| a == "spin");
    sock.set_nonblocking(spin)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg(echo)
        .stdin(Stdio::from(OwnedFd::from(theirs.try_clone()?)))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    let mut msg = [0u8; FRAME];
    let mut times = Vec::with_capacity(n);
    for i in 0..(WARMUP + n) as u64 {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        sock.write_all(&msg)?;
        if spin {
            read_spinning(&mut sock, &mut msg)?;
        } else {
            sock.read_exact(&mut msg)?;
        }
        let us = t.elapsed().as_secs_f64() * 1e6;
        ensure!(msg[..8] == i.to_le_bytes(), "ping {i} came back wrong");
        if i >= WARMUP as u64 {
            times.push(us);
        }
    }
    drop(sock);
    let status = child.wait()?;
    ensure!(status.success(), "echo child ended with {status}");
    let med = median(&times);
    times.sort_by(f64::total_cmp);
    let p99 = times[((times.len() as f64 * 0.99) as usize).min(times.len() - 1)];
    println!("{{\"rtt_us_med\": {med:.3}, \"rtt_us_p99\": {p99:.3}, \"n\": {n}}}");
    Ok(())
}

/// Fills `msg` from a non-blocking socket, yielding the CPU and trying again while nothing
/// has come (as the addon does).
fn read_spinning(sock: &mut UnixStream, msg: &mut [u8]) -> Result<()> {
    let mut have = 0;
    while have < msg.len() {
        match sock.read(&mut msg[have..]) {
            Ok(0) => bail!("the echo child closed the socket"),
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn echo() -> Result<()> {
    let mut input = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut output = UnixStream::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut msg = [0u8; FRAME];
    loop {
        let mut have = 0;
        while have < FRAME {
            let got = input.read(&mut msg[have..])?;
            if got == 0 {
                ensure!(have == 0, "echo: a partial message at end of file");
                return Ok(());
            }
            have += got;
        }
        output.write_all(&msg)?;
    }
}

/// The echo child as an async server: a task on tokio's multi-threaded runtime (as herd's
/// primary serves a channel), the socket read and written through its reactor.
fn echo_tokio() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(rt.spawn(async {
        let input =
            std::os::unix::net::UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        input.set_nonblocking(true)?;
        let mut sock = tokio::net::UnixStream::from_std(input)?;
        let mut msg = [0u8; FRAME];
        loop {
            let mut have = 0;
            while have < FRAME {
                let got = sock.read(&mut msg[have..]).await?;
                if got == 0 {
                    ensure!(have == 0, "echo: a partial message at end of file");
                    return Ok(());
                }
                have += got;
            }
            sock.write_all(&msg).await?;
        }
    }))?
}
