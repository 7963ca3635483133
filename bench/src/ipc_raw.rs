//! The raw `socketpair` contender: the limits an IPC layer over a Unix stream socket works
//! against, measured between this process and a child of the same binary.
//!
//! - **ping-pong**: one framed 16-byte message each way per round trip (the latency floor);
//! - **stream**: framed 16-byte messages (a 4-byte length, an 8-byte counter, 4 bytes of
//!   padding), encoded one by one into a 64 KiB batch and sent with one `write` per batch;
//!   the child reads in 256 KiB chunks, parses every frame and checks its counter (the floor
//!   for framed small messages);
//! - **bulk**: the payload sent with one large `write`, received into a buffer the child
//!   touched before the timing started (no page faults in the measurement).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Result};

use crate::{median, percentile, Round, WARMUP};

/// Environment variable that turns this binary into the raw-socket child.
pub const RAW_CHILD: &str = "HERD_BENCH_RAW_CHILD";
/// One message on the wire: about what `{"ping":123}` costs.
pub const FRAME: usize = 16;
/// Bytes the sender encodes before one `write`.
pub const BATCH: usize = 64 * 1024;
/// Bytes the reader asks for per `read`.
const READ_CHUNK: usize = 256 * 1024;

fn encode(buf: &mut [u8], counter: u64) {
    buf[0..4].copy_from_slice(&((FRAME - 4) as u32).to_le_bytes());
    buf[4..12].copy_from_slice(&counter.to_le_bytes());
    buf[12..16].copy_from_slice(&[0; 4]);
}

/// One round of the raw contender.
pub fn raw_round(pings: usize, stream: usize, sizes: &[usize], runs: usize) -> Result<Round> {
    let (mut sock, theirs) = UnixStream::pair()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(RAW_CHILD, "1")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    let mut round = Round::default();

    // Ping-pong.
    let mut msg = [0u8; FRAME];
    let mut rtt = Vec::with_capacity(pings);
    command(&mut sock, b'p', (WARMUP + pings) as u64)?;
    for i in 0..(WARMUP + pings) as u64 {
        let t = Instant::now();
        encode(&mut msg, i);
        sock.write_all(&msg)?;
        sock.read_exact(&mut msg)?;
        if i >= WARMUP as u64 {
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
        }
        ensure!(
            msg[4..12] == i.to_le_bytes(),
            "raw ping {i} came back wrong"
        );
    }
    round.rtt_med = percentile(&mut rtt, 0.5);
    round.rtt_p99 = percentile(&mut rtt, 0.99);

    // Stream: batches of encoded frames, each batch one write.
    let n = stream as u64;
    let mut batch = vec![1u8; BATCH];
    command(&mut sock, b's', n)?;
    let t = Instant::now();
    let mut i = 0u64;
    while i < n {
        let k = ((n - i) as usize).min(BATCH / FRAME);
        for (j, frame) in batch[..k * FRAME].chunks_exact_mut(FRAME).enumerate() {
            encode(frame, i + j as u64);
        }
        sock.write_all(&batch[..k * FRAME])?;
        i += k as u64;
    }
    ensure!(ack(&mut sock)? == n, "raw stream lost messages");
    round.stream_per_s = n as f64 / t.elapsed().as_secs_f64();

    // Bulk: the child pre-faults a buffer for the largest payload first.
    let max = sizes.iter().copied().max().unwrap_or(0);
    command(&mut sock, b'a', max as u64)?;
    ensure!(
        ack(&mut sock)? == max as u64,
        "raw child could not allocate"
    );
    for &size in sizes {
        let payload = vec![b'x'; size];
        let mut times = Vec::new();
        for _ in 0..runs {
            command(&mut sock, b'b', size as u64)?;
            let t = Instant::now();
            sock.write_all(&payload)?;
            ensure!(ack(&mut sock)? == size as u64, "raw bulk lost bytes");
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        round.bytes_ms.push((size, median(&times)));
    }
    command(&mut sock, b'q', 0)?;
    let status = child.wait()?;
    ensure!(status.success(), "raw child ended with {status}");
    Ok(round)
}

fn command(sock: &mut UnixStream, op: u8, arg: u64) -> Result<()> {
    let mut b = [0u8; 9];
    b[0] = op;
    b[1..].copy_from_slice(&arg.to_le_bytes());
    sock.write_all(&b)?;
    Ok(())
}

fn ack(sock: &mut UnixStream) -> Result<u64> {
    let mut b = [0u8; 8];
    sock.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// The raw child: blocking reads and writes on the socket it got as stdin.
pub fn raw_child() -> Result<()> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut sock = UnixStream::from(fd);
    let mut out = sock.try_clone()?;
    let mut cmd = [0u8; 9];
    let mut bulk: Vec<u8> = Vec::new();
    loop {
        sock.read_exact(&mut cmd)?;
        let arg = u64::from_le_bytes(cmd[1..].try_into()?);
        match cmd[0] {
            b'p' => {
                let mut msg = [0u8; FRAME];
                for _ in 0..arg {
                    sock.read_exact(&mut msg)?;
                    out.write_all(&msg)?;
                }
            }
            b's' => {
                let got = read_frames(&mut sock, arg)?;
                out.write_all(&got.to_le_bytes())?;
            }
            b'a' => {
                // Touch every page now, so the timed reads never fault.
                bulk = vec![0u8; arg as usize];
                bulk.fill(1);
                std::hint::black_box(&mut bulk);
                out.write_all(&(bulk.len() as u64).to_le_bytes())?;
            }
            b'b' => {
                let size = arg as usize;
                ensure!(size <= bulk.len(), "raw child: bulk buffer too small");
                sock.read_exact(&mut bulk[..size])?;
                out.write_all(&arg.to_le_bytes())?;
            }
            b'q' => return Ok(()),
            op => bail!("raw child: unknown op {op}"),
        }
    }
}

/// Reads `n` length-prefixed frames in large chunks, checking each one's counter.
fn read_frames(sock: &mut UnixStream, n: u64) -> Result<u64> {
    let mut buf = vec![1u8; READ_CHUNK];
    let mut have = 0;
    let mut next = 0u64;
    while next < n {
        let got = sock.read(&mut buf[have..])?;
        ensure!(got > 0, "raw stream ended early");
        have += got;
        let mut off = 0;
        while have - off >= 4 {
            let len = u32::from_le_bytes(buf[off..off + 4].try_into()?) as usize;
            if have - off < 4 + len {
                break;
            }
            ensure!(len >= 8, "raw frame of {len} bytes");
            let c = u64::from_le_bytes(buf[off + 4..off + 12].try_into()?);
            ensure!(c == next, "raw frame {c} where {next} was due");
            next += 1;
            off += 4 + len;
        }
        buf.copy_within(off..have, 0);
        have -= off;
    }
    Ok(next)
}
