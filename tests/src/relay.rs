//! A TCP relay: connections to one address are carried to another. The machine's services
//! listen on loopback only, as `scripts/lib.sh` starts them; a test host reaches them as
//! a machine of a real fleet reaches the broker's host, at an address on its link (the
//! host's gateway), where a relay listens and carries the bytes on to the loopback service.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A listening relay; dropping it stops taking connections (those open carry on to their end).
pub struct Relay {
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relay `listen` to `target`. `None` when `listen` is taken already: the service itself
    /// listens there (a RabbitMQ started on every interface), and needs no relay.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Option<Relay> {
        let listener = match TcpListener::bind(listen) {
            Ok(listener) => listener,
            Err(e) if e.kind() == ErrorKind::AddrInUse => return None,
            Err(e) => panic!("a relay on {listen}: {e}"),
        };
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        std::thread::spawn(move || carry(client, target));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Some(Relay { stop })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copy both ways between `client` and a new connection to `target` until either side ends.
fn carry(client: TcpStream, target: SocketAddr) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone()) else { return };
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let _ = std::io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
    let _ = upstream.join();
}
