//! A line protocol on berth with `asynchronous-codec`: each request is one line.
//!
//! ```text
//! PING          -> PONG
//! ECHO <text>   -> <text>
//! UPPER <text>  -> <TEXT>
//! QUIT          -> BYE, then the server closes
//! (other)       -> ERR unknown command
//! ```
//!
//! Lines longer than `--max-line` bytes (default 1024) get `ERR line too long` and the
//! connection is closed: an unbounded line would let one client fill the server's memory.
//! On SIGTERM/SIGINT the server drains: each connection finishes the request in hand and
//! stops before reading the next one.
//!
//! `cargo run --example lines -- --addr 127.0.0.1:7001`, then `nc 127.0.0.1 7001`.

use std::time::Duration;

use asynchronous_codec::{BytesMut, Decoder, Encoder, Framed, LinesCodec};
use berth::{Config, Conn, Server};
use clap::Parser;
use futures_lite::{FutureExt, StreamExt};
use futures_util::SinkExt;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: String,
    /// Longest accepted line, in bytes.
    #[arg(long, default_value_t = 1024)]
    max_line: usize,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain_timeout: Duration,
}

/// `LinesCodec` with a length limit.
struct Lines {
    max: usize,
}

impl Decoder for Lines {
    type Item = String;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, std::io::Error> {
        match LinesCodec.decode(src)? {
            Some(line) if line.len() <= self.max + 1 => Ok(Some(line)),
            Some(_) => Err(too_long()),
            None if src.len() > self.max => Err(too_long()),
            None => Ok(None),
        }
    }
}

impl Encoder for Lines {
    type Item<'a> = String;
    type Error = std::io::Error;

    fn encode(&mut self, line: String, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        LinesCodec.encode(line + "\n", dst)
    }
}

fn too_long() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long")
}

/// One request, one answer; `None` closes the connection after answering.
fn answer(line: &str) -> (String, bool) {
    let line = line.trim_end_matches(['\r', '\n']);
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    match command {
        "PING" => ("PONG".into(), true),
        "ECHO" => (rest.into(), true),
        "UPPER" => (rest.to_uppercase(), true),
        "QUIT" => ("BYE".into(), false),
        _ => ("ERR unknown command".into(), true),
    }
}

async fn serve(conn: Conn, max_line: usize) {
    let mut draining = conn.draining();
    let mut framed = Framed::new(conn, Lines { max: max_line });
    loop {
        // The next request, unless the server starts draining first.
        let next = async { framed.next().await.map(Some) };
        let drained = async {
            (&mut draining).await;
            Some(None)
        };
        let line = match next.or(drained).await {
            Some(Some(Ok(line))) => line,
            Some(Some(Err(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
                let _ = framed.send(format!("ERR {e}")).await;
                return;
            }
            _ => return, // end of stream, an error, or draining
        };
        let (reply, keep_going) = answer(&line);
        if framed.send(reply).await.is_err() || !keep_going || framed.is_draining() {
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
    let max_line = args.max_line;
    let handle = server.serve(move |conn: Conn| serve(conn, max_line));
    // SIGTERM or SIGINT: drain within --drain-timeout, then exit.
    let report = futures_lite::future::block_on(handle.shutdown_on(signals.recv()));
    match report {
        Ok(report) => println!("shutdown complete: {report}"),
        Err(e) => println!("shutdown complete: {e}"),
    }
    Ok(())
}
