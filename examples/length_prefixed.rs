//! Length-prefixed frames on berth with `asynchronous-codec`: each frame is a 4-byte
//! big-endian length and that many bytes of payload. The server answers each frame with the
//! payload reversed.
//!
//! Frames longer than `--max-frame` (default 64 KiB) are refused before their payload is
//! buffered: the connection is closed. On SIGTERM/SIGINT the server drains between frames.
//!
//! `cargo run --example length_prefixed -- --addr 127.0.0.1:7002`

use std::time::Duration;

use asynchronous_codec::{Bytes, BytesMut, Decoder, Encoder, Framed};
use berth::{Config, Conn, Server};
use bytes::{Buf, BufMut};
use clap::Parser;
use futures_lite::{FutureExt, StreamExt};
use futures_util::SinkExt;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7002")]
    addr: String,
    /// Largest accepted payload, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_frame: u32,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain_timeout: Duration,
}

/// 4-byte big-endian length + payload, payloads up to `max` bytes.
struct LengthPrefixed {
    max: u32,
}

impl Decoder for LengthPrefixed {
    type Item = Bytes;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, std::io::Error> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len > self.max {
            // Refused from the header alone: the payload is never buffered.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes is over the {} byte limit", self.max),
            ));
        }
        let len = len as usize;
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl Encoder for LengthPrefixed {
    type Item<'a> = Bytes;
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|len| *len <= self.max)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too long")
            })?;
        dst.reserve(4 + frame.len());
        dst.put_u32(len);
        dst.put_slice(&frame);
        Ok(())
    }
}

async fn serve(conn: Conn, max: u32) {
    let mut draining = conn.draining();
    let mut framed = Framed::new(conn, LengthPrefixed { max });
    loop {
        let next = async { framed.next().await.map(Some) };
        let drained = async {
            (&mut draining).await;
            Some(None)
        };
        let frame = match next.or(drained).await {
            Some(Some(Ok(frame))) => frame,
            _ => return, // end of stream, an oversized or broken frame, or draining
        };
        let reply: Bytes = frame.iter().rev().copied().collect::<Vec<u8>>().into();
        if framed.send(reply).await.is_err() || framed.is_draining() {
            return;
        }
    }
}

fn main() -> Result<(), berth::Error> {
    let args = Args::parse();
    // Installed before binding, so a signal right after "listening on" is never lost.
    let signals = berth::signal::Signals::new()?;
    let mut config = Config::new(args.addr);
    config.drain_timeout = args.drain_timeout;
    let server = Server::bind(config)?;
    println!("listening on {}", server.local_addr());
    let max = args.max_frame;
    let handle = server.serve(move |conn: Conn| serve(conn, max));
    // SIGTERM or SIGINT: drain within --drain-timeout, then exit.
    let report = futures_lite::future::block_on(handle.shutdown_on(signals.recv()));
    match report {
        Ok(report) => println!("shutdown complete: {report}"),
        Err(e) => println!("shutdown complete: {e}"),
    }
    Ok(())
}
