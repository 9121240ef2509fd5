//! Connection caps (docs/security.md §14): at most `limits.max_connections` client
//! connections at once, and at most `limits.max_connections_per_ip` from one address. A
//! connection over a cap is closed as soon as it is accepted, before any byte is read or
//! any TLS work is done; the cap frees when an admitted connection (or its tunnel) closes.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open connections per address (only with a per-IP cap).
type ByIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections` connections are open.
    Total,
    /// `limits.max_connections_per_ip` connections from this address are open.
    PerIp,
}

/// The caps of the proxy listener; clones share them (one set of caps for every
/// worker's listener, see `super::workers`).
#[derive(Debug, Clone)]
pub struct Admission {
    total: Arc<Semaphore>,
    per_ip: Option<usize>,
    by_ip: ByIp,
}

/// One admitted connection's share of the caps, given back on drop.
#[derive(Debug)]
pub struct Admitted {
    _total: OwnedSemaphorePermit,
    ip: Option<(IpAddr, ByIp)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((ip, by_ip)) = &self.ip {
            let mut map = by_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(ip);
                }
            }
        }
    }
}

impl Admission {
    pub fn new(max_connections: usize, max_per_ip: Option<usize>) -> Self {
        Admission {
            total: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            per_ip: max_per_ip,
            by_ip: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Admit a connection from `ip`, or say which cap it would exceed.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        let ip = match self.per_ip {
            None => None,
            Some(cap) => {
                let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
                let n = map.entry(ip).or_insert(0);
                if *n >= cap {
                    if *n == 0 {
                        map.remove(&ip);
                    }
                    return Err(Refused::PerIp);
                }
                *n += 1;
                Some((ip, self.by_ip.clone()))
            }
        };
        Ok(Admitted { _total: total, ip })
    }

    /// Addresses with at least one open connection (per-IP cap on), for tests.
    pub fn tracked_addresses(&self) -> usize {
        self.by_ip.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn total_cap_frees_on_drop() {
        let adm = Admission::new(2, None);
        let a = adm.admit(A).unwrap();
        let _b = adm.admit(B).unwrap();
        assert_eq!(adm.admit(A).unwrap_err(), Refused::Total);
        drop(a);
        assert!(adm.admit(A).is_ok());
        assert_eq!(
            adm.tracked_addresses(),
            0,
            "no per-IP map without a per-IP cap"
        );
    }

    #[test]
    fn per_ip_cap_counts_each_address_and_forgets_closed_ones() {
        let adm = Admission::new(10, Some(2));
        let a1 = adm.admit(A).unwrap();
        let a2 = adm.admit(A).unwrap();
        assert_eq!(adm.admit(A).unwrap_err(), Refused::PerIp);
        let b1 = adm.admit(B).unwrap();
        drop(a1);
        let a3 = adm.admit(A).unwrap();
        drop((a2, a3, b1));
        assert_eq!(
            adm.tracked_addresses(),
            0,
            "the map does not grow without bound"
        );
        // A refusal by the per-IP cap gives the total permit back.
        let adm = Admission::new(1, Some(1));
        let a = adm.admit(A).unwrap();
        assert_eq!(adm.admit(A).unwrap_err(), Refused::Total);
        drop(a);
        assert!(adm.admit(B).is_ok());
    }
}
