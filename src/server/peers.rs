//! Open connections per client address, so one host cannot take every connection slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Counts open connections by client address and admits a new one only under the cap.
#[derive(Clone)]
pub struct PeerCounts {
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
    cap: u32,
}

/// One admitted connection; its address's count goes down when it drops.
pub struct PeerSlot {
    open: Option<Arc<Mutex<HashMap<IpAddr, u32>>>>,
    ip: IpAddr,
}

impl PeerCounts {
    /// At most `cap` open connections per address; 0 means no cap.
    pub fn new(cap: u32) -> Self {
        Self {
            open: Arc::new(Mutex::new(HashMap::new())),
            cap,
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it already has `cap` open.
    pub fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        if self.cap == 0 {
            return Some(PeerSlot { open: None, ip });
        }
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            open: Some(Arc::clone(&self.open)),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let Some(open) = &self.open else { return };
        let mut open = open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Only addresses with open connections are remembered.
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_cap_and_slots_come_back() {
        let peers = PeerCounts::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = peers.admit(a).unwrap();
        let _second = peers.admit(a).unwrap();
        assert!(peers.admit(a).is_none(), "a third from the same address");
        assert!(peers.admit(b).is_some(), "another address is not affected");
        drop(first);
        assert!(
            peers.admit(a).is_some(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn forgotten_once_closed_and_zero_means_no_cap() {
        let peers = PeerCounts::new(1);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        drop(peers.admit(a).unwrap());
        assert!(peers.open.lock().is_empty());
        let open = PeerCounts::new(0);
        let held: Vec<_> = (0..100).map(|_| open.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 100);
    }
}
