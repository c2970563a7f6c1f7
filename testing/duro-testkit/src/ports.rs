//! Free loopback ports for sidecars and fakes.

use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// A loopback port nothing listens on, never the same one twice in this process.
///
/// Tests run in parallel threads: a port handed to one sidecar must not be handed to another
/// test's sidecar once the first exits (or is killed for a restart), or a test would talk to
/// the wrong sidecar. The OS picks the port (bind to port 0); ports already handed out are
/// skipped.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind a loopback port to find a free one: {e}"));
        let mut handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice: {ports:?}");
    }

    #[test]
    fn hands_out_ports_nothing_listens_on() {
        let port = free_port();
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} is taken");
    }
}
