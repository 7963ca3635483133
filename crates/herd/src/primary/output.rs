//! Captured worker output: each pipe is read line by line (long lines in pieces) into a bounded
//! queue the worker's supervisor turns into [`super::Event::Output`].

use tokio::sync::mpsc;

use super::event::{OutputStream, MAX_OUTPUT_LINE};

/// The next captured line, or never when output is not captured.
pub(super) async fn recv_output(
    rx: &mut Option<mpsc::Receiver<(OutputStream, String)>>,
) -> Option<(OutputStream, String)> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads `pipe` line by line (at most [`MAX_OUTPUT_LINE`] bytes per piece) into `tx`; ends at
/// end-of-file, on a read error, or when nobody takes the lines.
pub(super) async fn read_lines<R: tokio::io::AsyncRead + Unpin>(
    pipe: R,
    stream: OutputStream,
    tx: mpsc::Sender<(OutputStream, String)>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::with_capacity(MAX_OUTPUT_LINE, pipe);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let (done, used) = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                if !line.is_empty() {
                    let _ = tx
                        .send((stream, String::from_utf8_lossy(&line).into_owned()))
                        .await;
                }
                return;
            }
            Ok(buf) => {
                let room = MAX_OUTPUT_LINE - line.len();
                match memchr_nl(&buf[..buf.len().min(room)]) {
                    Some(i) => {
                        line.extend_from_slice(&buf[..i]);
                        (true, i + 1)
                    }
                    None => {
                        let n = buf.len().min(room);
                        line.extend_from_slice(&buf[..n]);
                        (line.len() >= MAX_OUTPUT_LINE, n)
                    }
                }
            }
        };
        reader.consume(used);
        if done {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            if tx.send((stream, text)).await.is_err() {
                return;
            }
        }
    }
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}
