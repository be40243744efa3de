//! Applying the plan's faults to the simulated world between steps: partitions, held links,
//! crashes and restarts of the server host, latency changes — and ending them all
//! ([`quiesce`]) so that every client can catch up.

use std::time::Duration;

use crate::plan::{Fault, SERVER};

/// The world's fault state between steps.
#[derive(Debug)]
pub struct Faults {
    clients: usize,
    latency: Duration,
    server_up: bool,
}

impl Faults {
    /// No fault yet, `clients` clients `c0..`, links at `latency`.
    pub fn new(clients: usize, latency: Duration) -> Faults {
        Faults {
            clients,
            latency,
            server_up: true,
        }
    }

    /// Applies one fault.
    pub fn apply(&mut self, sim: &mut turmoil::Sim<'_>, fault: Fault) {
        let client = |c: usize| format!("c{c}");
        match fault {
            Fault::Partition(c) => sim.partition(SERVER, client(c)),
            Fault::Repair(c) => sim.repair(SERVER, client(c)),
            Fault::Hold(c) => sim.hold(SERVER, client(c)),
            Fault::Release(c) => sim.release(SERVER, client(c)),
            Fault::Isolate => (0..self.clients).for_each(|c| sim.partition(SERVER, client(c))),
            Fault::Heal => (0..self.clients).for_each(|c| sim.repair(SERVER, client(c))),
            Fault::Crash => {
                if self.server_up {
                    sim.crash(SERVER);
                    self.server_up = false;
                }
            }
            Fault::Restart => {
                sim.bounce(SERVER);
                self.server_up = true;
            }
            Fault::Latency(c, ms) => set_latency(sim, &client(c), Duration::from_millis(ms)),
        }
    }

    /// Ends every fault: links repaired, released and back to the base latency, server running.
    pub fn quiesce(&mut self, sim: &mut turmoil::Sim<'_>) {
        for c in 0..self.clients {
            let name = format!("c{c}");
            sim.repair(SERVER, name.as_str());
            sim.release(SERVER, name.as_str());
            set_latency(sim, &name, self.latency);
        }
        if !self.server_up {
            sim.bounce(SERVER);
            self.server_up = true;
        }
    }
}

/// Sets the latency of the server–client link, if it exists yet (turmoil creates links on
/// first use and panics on a missing one).
fn set_latency(sim: &turmoil::Sim<'_>, client: &str, latency: Duration) {
    let pair = {
        let (a, b) = (sim.lookup(SERVER), sim.lookup(client));
        if a < b {
            (a, b)
        } else {
            (b, a)
        }
    };
    let mut exists = false;
    sim.links(|links| {
        for link in links {
            exists |= link.pair() == pair;
        }
    });
    if exists {
        sim.set_link_latency(SERVER, client, latency);
    }
}
