//! The README's Quick start and tokio section, run the way a user would: the examples hold
//! exactly the README's code (checked here), and run as programs that serve and drain.
#![cfg(all(target_os = "linux", feature = "smol", feature = "tokio"))]

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::example::{Example, WAIT};

/// The body of the first ```rust block after `heading` in the README.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = &readme[readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"))..];
    let start = section.find("```rust").expect("a rust block");
    let body = &section[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

fn example_source(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{name}.rs", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_readme_shows_exactly_the_examples_code() {
    let _light = crate::light();
    assert_eq!(
        readme_block("## Quick start"),
        example_source("quickstart"),
        "README's Quick start and examples/quickstart.rs differ"
    );
    assert_eq!(
        readme_block("### tokio"),
        example_source("tokio_quickstart"),
        "README's tokio section and examples/tokio_quickstart.rs differ"
    );
}

/// Connects to a `listening on` address, echoes once, and returns the connection.
fn echo_once(addr: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"hello berth").unwrap();
    let mut back = [0u8; 11];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello berth");
    c
}

/// SIGTERM drains the open connection (the client reads end of file) and the program
/// exits 0 with its summary.
fn drains_on_sigterm(program: Example, mut client: TcpStream) {
    program.sigterm();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("a clean end of file");
    assert!(rest.is_empty(), "{rest:?}");
    drop(client);
    assert_eq!(
        program.line(),
        "shutdown complete: 1 connection(s) drained, 0 forced"
    );
    let (status, stderr) = program.wait();
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn the_quick_start_serves_and_drains_on_sigterm() {
    let _light = crate::light();
    let program = Example::spawn("quickstart", &["127.0.0.1:0"]);
    let client = echo_once(&program.addr());
    drains_on_sigterm(program, client);
}

/// The names of a process's threads.
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let comm = task.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_owned()
        })
        .collect()
}

/// `#[tokio::main]` with `Server::bind`: served on tokio (its handler's tokio sleep works),
/// with no async-io reactor or smol executor thread beside tokio's.
#[test]
fn the_tokio_quick_start_serves_on_tokio_alone() {
    let _light = crate::light();
    let program = Example::spawn("tokio_quickstart", &["127.0.0.1:0"]);
    let client = echo_once(&program.addr());
    let names = threads(program.child.id());
    assert!(
        names.iter().any(|n| n.starts_with("tokio-rt")),
        "no tokio worker thread: {names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n == "async-io" || n.starts_with("berth-smol")),
        "a second reactor or executor runs beside tokio: {names:?}"
    );
    drains_on_sigterm(program, client);
}
