//! Shared by the tests that run the real binary: a child's output as a channel of lines.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;

/// Every line `reader` yields, sent as it arrives by a thread that stops at EOF or when the
/// receiver is dropped (so a test can wait for a line with `recv_timeout`, never a sleep).
pub fn lines(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}
