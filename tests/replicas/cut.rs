//! A TCP proxy in front of a replica, for the test where it stops answering.

use std::sync::Arc;

/// A TCP proxy to `127.0.0.1:upstream` that can be cut: while down it closes every
/// connection and refuses new ones.
pub struct Cut {
    pub port: u16,
    down: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Cut {
    pub async fn start(upstream: u16) -> Cut {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(tokio::sync::watch::channel(false).0);
        let watch = down.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    continue; // dropped: closed at once
                }
                let mut cut = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Cut { port, down }
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}
