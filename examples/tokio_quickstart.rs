use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::FuturesAsyncReadCompatExt;

#[tokio::main]
async fn main() -> Result<(), berth::Error> {
    let signals = berth::signal::Signals::new()?;
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    // Inside a tokio runtime, berth runs on it: tokio's sockets, tasks and timers.
    let server = berth::Server::bind(berth::Config::new(addr))?;
    println!("listening on {}", server.local_addr());
    let handle = server.serve(|conn: berth::Conn| async move {
        let draining = conn.draining();
        tokio::pin!(draining);
        // Conn is futures-io; `.compat()` makes it tokio-io, for tokio's helpers and codecs.
        let mut conn = conn.compat();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::select! {
                read = conn.read(&mut buf) => match read {
                    Ok(n @ 1..) => n,
                    _ => break, // the peer closed, or an error
                },
                () = &mut draining => break, // shutdown: stop between requests
            };
            // Handlers are tokio tasks: tokio's timers and I/O work in them.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            if conn.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let report = handle.shutdown_on(signals.recv()).await?;
    println!("shutdown complete: {report}");
    Ok(())
}
