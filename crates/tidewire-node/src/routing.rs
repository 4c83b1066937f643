//! Link-state routing. Every node floods a signed announcement of its live links (and the route
//! interests of its subscribers); each node keeps the newest announcement per node and computes
//! shortest paths by breadth-first search over links both ends confirm. Ties break by node id, so
//! every node computes the same paths from the same announcements.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use tidewire_core::model::RoutePattern;
use tidewire_core::{NodeId, Route};

/// The newest announcement of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// Its sequence number.
    pub seq: u64,
    /// Live neighbours.
    pub neighbours: BTreeSet<NodeId>,
    /// Route interests.
    pub interests: Vec<RoutePattern>,
    /// The signed frame, to re-flood as is.
    pub frame: tidewire_proto::v1::LinkState,
}

/// The routing view of one node.
#[derive(Debug, Clone)]
pub struct Routing {
    me: NodeId,
    /// Our own live links.
    live: BTreeSet<NodeId>,
    db: HashMap<NodeId, Announcement>,
    next_hop: HashMap<NodeId, (NodeId, u32)>,
}

impl Routing {
    /// An empty view for `me`.
    pub fn new(me: NodeId) -> Routing {
        Routing {
            me,
            live: BTreeSet::new(),
            db: HashMap::new(),
            next_hop: HashMap::new(),
        }
    }

    /// Marks a direct link up or down; returns whether anything changed.
    pub fn set_live(&mut self, peer: &NodeId, up: bool) -> bool {
        let changed = if up {
            self.live.insert(peer.clone())
        } else {
            self.live.remove(peer)
        };
        if changed {
            self.recompute();
        }
        changed
    }

    /// Our live links.
    pub fn live(&self) -> &BTreeSet<NodeId> {
        &self.live
    }

    /// Records an announcement if newer than what we have; returns whether it was.
    pub fn learn(&mut self, node: NodeId, a: Announcement) -> bool {
        if node == self.me {
            return false;
        }
        if self.db.get(&node).is_some_and(|old| old.seq >= a.seq) {
            return false;
        }
        self.db.insert(node, a);
        self.recompute();
        true
    }

    /// Forgets `node`'s announcement (it left the roster): it is no longer passed on to new
    /// neighbours, and routes through it go. Returns whether there was one.
    pub fn forget(&mut self, node: &NodeId) -> bool {
        let had = self.db.remove(node).is_some();
        if had {
            self.recompute();
        }
        had
    }

    /// Every announcement we hold (to send to a new neighbour).
    pub fn announcements(&self) -> impl Iterator<Item = &Announcement> {
        self.db.values()
    }

    fn neighbours_of(&self, n: &NodeId) -> Vec<NodeId> {
        if *n == self.me {
            return self.live.iter().cloned().collect();
        }
        let Some(a) = self.db.get(n) else {
            return Vec::new();
        };
        a.neighbours
            .iter()
            .filter(|m| {
                // An edge counts when both ends announce it (or the other end is us and live).
                if **m == self.me {
                    self.live.contains(n)
                } else {
                    self.db.get(*m).is_some_and(|b| b.neighbours.contains(n))
                }
            })
            .cloned()
            .collect()
    }

    fn recompute(&mut self) {
        let mut next: HashMap<NodeId, (NodeId, u32)> = HashMap::new();
        let mut queue = VecDeque::new();
        let mut seen = BTreeSet::new();
        seen.insert(self.me.clone());
        for n in self.neighbours_of(&self.me) {
            seen.insert(n.clone());
            next.insert(n.clone(), (n.clone(), 1));
            queue.push_back(n);
        }
        while let Some(n) = queue.pop_front() {
            let (hop, dist) = next[&n].clone();
            let mut ns = self.neighbours_of(&n);
            ns.sort();
            for m in ns {
                if seen.insert(m.clone()) {
                    next.insert(m.clone(), (hop.clone(), dist + 1));
                    queue.push_back(m);
                }
            }
        }
        self.next_hop = next;
    }

    /// The next hop towards `dest`, if reachable.
    pub fn next_hop(&self, dest: &NodeId) -> Option<&NodeId> {
        self.next_hop.get(dest).map(|(h, _)| h)
    }

    /// Every reachable node with its next hop and distance, sorted.
    pub fn table(&self) -> BTreeMap<NodeId, (NodeId, u32)> {
        self.next_hop
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Nodes whose announced interests match any of `routes`.
    pub fn interested(&self, routes: &[Route]) -> BTreeSet<NodeId> {
        self.db
            .iter()
            .filter(|(_, a)| {
                a.interests
                    .iter()
                    .any(|p| routes.iter().any(|r| p.matches(r)))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn ann(seq: u64, ns: &[&str]) -> Announcement {
        Announcement {
            seq,
            neighbours: ns.iter().map(|s| id(s)).collect(),
            interests: Vec::new(),
            frame: Default::default(),
        }
    }

    #[test]
    fn line_routes_through_the_middle() {
        let mut r = Routing::new(id("a"));
        r.set_live(&id("b"), true);
        r.learn(id("b"), ann(1, &["a", "c"]));
        r.learn(id("c"), ann(1, &["b"]));
        assert_eq!(r.next_hop(&id("c")), Some(&id("b")));
        assert_eq!(r.table()[&id("c")].1, 2);
    }

    #[test]
    fn a_dead_link_reroutes_and_old_announcements_are_ignored() {
        let mut r = Routing::new(id("a"));
        r.set_live(&id("b"), true);
        r.set_live(&id("d"), true);
        r.learn(id("b"), ann(1, &["a", "c"]));
        r.learn(id("d"), ann(1, &["a", "c"]));
        r.learn(id("c"), ann(1, &["b", "d"]));
        assert_eq!(r.next_hop(&id("c")), Some(&id("b")));
        r.set_live(&id("b"), false);
        assert_eq!(r.next_hop(&id("c")), Some(&id("d")));
        assert!(!r.learn(id("c"), ann(1, &["b"])), "same seq is not newer");
        r.learn(id("c"), ann(2, &["b"]));
        assert_eq!(r.next_hop(&id("c")), None, "c no longer confirms d");
    }

    #[test]
    fn a_forgotten_node_is_neither_passed_on_nor_routed_through() {
        let mut r = Routing::new(id("a"));
        r.set_live(&id("b"), true);
        r.learn(id("b"), ann(1, &["a", "c"]));
        r.learn(id("c"), ann(1, &["b", "d"]));
        r.learn(id("d"), ann(1, &["c"]));
        assert_eq!(r.next_hop(&id("d")), Some(&id("b")));
        assert!(r.forget(&id("c")));
        assert!(!r.forget(&id("c")), "forgotten once");
        assert_eq!(r.next_hop(&id("c")), None);
        assert_eq!(r.next_hop(&id("d")), None, "d was reached only through c");
        assert_eq!(
            r.announcements().count(),
            2,
            "b's and d's are left to pass on"
        );
    }

    proptest! {
        /// On random graphs, every reachable node's next hop is a live neighbour and following
        /// next hops (as each node would compute them) reaches the destination without a loop.
        #[test]
        fn next_hops_follow_shortest_paths_without_loops(edges in proptest::collection::vec((0u8..8, 0u8..8), 0..20)) {
            let names: Vec<NodeId> = (0..8).map(|i| id(&format!("n{i}"))).collect();
            let mut adj: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
            for (a, b) in edges {
                if a != b {
                    adj.entry(a as usize).or_default().insert(b as usize);
                    adj.entry(b as usize).or_default().insert(a as usize);
                }
            }
            let view = |me: usize| {
                let mut r = Routing::new(names[me].clone());
                for n in adj.get(&me).into_iter().flatten() {
                    r.set_live(&names[*n], true);
                }
                for (node, ns) in &adj {
                    if *node != me {
                        let list: Vec<&str> = ns.iter().map(|i| names[*i].as_str()).collect();
                        r.learn(names[*node].clone(), ann(1, &list));
                    }
                }
                r
            };
            let views: Vec<Routing> = (0..8).map(view).collect();
            for src in 0..8 {
                for dst in 0..8 {
                    if src == dst { continue; }
                    let mut at = src;
                    let mut steps = 0;
                    while at != dst {
                        match views[at].next_hop(&names[dst]) {
                            Some(h) => {
                                let hi = names.iter().position(|n| n == h).unwrap();
                                prop_assert!(adj[&at].contains(&hi), "next hop is not a neighbour");
                                at = hi;
                            }
                            None => break,
                        }
                        steps += 1;
                        prop_assert!(steps <= 8, "routing loop");
                    }
                    let reachable = views[src].next_hop(&names[dst]).is_some();
                    prop_assert_eq!(reachable, at == dst);
                    if reachable {
                        prop_assert_eq!(steps as u32, views[src].table()[&names[dst]].1);
                    }
                }
            }
        }
    }
}
