use futures_lite::{AsyncReadExt, AsyncWriteExt};

fn main() -> Result<(), berth::Error> {
    // SIGTERM and Ctrl-C from now on: they start a graceful shutdown instead of killing us.
    let signals = berth::signal::Signals::new()?;
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let mut config = berth::Config::new(addr);
    config.idle_timeout = Some(std::time::Duration::from_secs(30));

    let server = berth::Server::bind(config)?;
    println!("listening on {}", server.local_addr());
    let handle = server.serve(|mut conn: berth::Conn| async move {
        // readable() waits for data without holding a buffer, and also returns when the
        // server starts draining: then stop between two requests.
        while conn.readable().await.is_ok() && !conn.is_draining() {
            let mut buf = [0u8; 4096];
            match conn.read(&mut buf).await {
                Ok(n @ 1..) if conn.write_all(&buf[..n]).await.is_ok() => {}
                _ => break, // the peer closed, or an error
            }
        }
    }); // the connection closes when the handler returns (or panics)

    // Serve until a signal, then let open connections finish (up to config.drain_timeout).
    let report = futures_lite::future::block_on(handle.shutdown_on(signals.recv()))?;
    println!("shutdown complete: {report}");
    Ok(())
}
