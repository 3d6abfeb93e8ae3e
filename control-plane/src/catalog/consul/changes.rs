//! Which services to read again, from two successive answers of Consul's
//! check list (`/v1/health/state/any`) or node list (`/v1/catalog/nodes`).
//!
//! What moves which of Consul's indexes (checked against Consul 1.14): a
//! check's status or output moves only the check index; a registration,
//! deregistration or re-registration (address, port, tags, meta, weights)
//! only the service index (and the check index when it adds or removes a
//! check); a node's address or meta only the node index. A node's address
//! and meta reach every instance on it that has no address of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::api::{CheckEntry, NodeEntry};

/// The check list, reduced to what tells a change: per (node, check ID),
/// the service it checks ("" for a node check) and its modify index.
pub type Checks = HashMap<(String, String), (String, u64)>;

/// The node list, reduced: each node's modify index.
pub type Nodes = HashMap<String, u64>;

/// Reduces a check list answer.
pub fn checks(entries: Vec<CheckEntry>) -> Checks {
    entries
        .into_iter()
        .map(|c| ((c.node, c.check_id), (c.service, c.modify_index)))
        .collect()
}

/// Reduces a node list answer.
pub fn nodes(entries: Vec<NodeEntry>) -> Nodes {
    entries
        .into_iter()
        .map(|n| (n.node, n.modify_index))
        .collect()
}

/// What differs between two check lists: the services whose own checks
/// were added, removed or changed, and the nodes whose node checks were.
pub fn changed_checks(before: &Checks, after: &Checks) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut services, mut nodes) = (BTreeSet::new(), BTreeSet::new());
    let mut note = |(node, _): &(String, String), (service, _): &(String, u64)| {
        if service.is_empty() {
            nodes.insert(node.clone());
        } else {
            services.insert(service.clone());
        }
    };
    for (key, now) in after {
        match before.get(key) {
            Some(then) if then == now => {}
            Some(then) => {
                // A check moved to another service counts for both.
                note(key, then);
                note(key, now);
            }
            None => note(key, now),
        }
    }
    for (key, then) in before {
        if !after.contains_key(key) {
            note(key, then);
        }
    }
    (services, nodes)
}

/// Nodes changed or gone between two node lists (a new node has no
/// instances yet: registering them moves the service index).
pub fn changed_nodes(before: &Nodes, after: &Nodes) -> BTreeSet<String> {
    before
        .iter()
        .filter(|(node, index)| after.get(*node) != Some(index))
        .map(|(node, _)| node.clone())
        .collect()
}

/// The services with an instance (healthy or not, as last read) on one of
/// `nodes`.
pub fn services_on(
    nodes_of: &BTreeMap<String, BTreeSet<String>>,
    nodes: &BTreeSet<String>,
) -> Vec<String> {
    if nodes.is_empty() {
        return Vec::new();
    }
    nodes_of
        .iter()
        .filter(|(_, on)| !on.is_disjoint(nodes))
        .map(|(service, _)| service.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(node: &str, id: &str, service: &str, index: u64) -> CheckEntry {
        CheckEntry {
            node: node.into(),
            check_id: id.into(),
            service: service.into(),
            modify_index: index,
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|i| (*i).to_owned()).collect()
    }

    #[test]
    fn check_changes_name_their_services_and_node_checks_their_nodes() {
        let before = checks(vec![
            check("n1", "serfHealth", "", 5),
            check("n1", "c:a1", "a", 6),
            check("n1", "c:b1", "b", 7),
            check("n2", "c:c1", "c", 8),
            check("n2", "serfHealth", "", 5),
        ]);
        let after = checks(vec![
            check("n1", "serfHealth", "", 5),
            check("n1", "c:a1", "a", 9),  // status changed
            check("n2", "c:c1", "c", 8),  // unchanged
            check("n2", "c:d1", "d", 10), // added
            check("n2", "serfHealth", "", 11),
        ]); // b's check removed
        let (services, nodes) = changed_checks(&before, &after);
        assert_eq!(services, set(&["a", "b", "d"]));
        assert_eq!(nodes, set(&["n2"]));
        assert_eq!(changed_checks(&after, &after), (set(&[]), set(&[])));
    }

    #[test]
    fn node_changes_reach_the_services_on_them() {
        let before: Nodes = [("n1".into(), 3), ("n2".into(), 4), ("n3".into(), 5)].into();
        let after: Nodes = [("n1".into(), 3), ("n2".into(), 9), ("n4".into(), 9)].into();
        let changed = changed_nodes(&before, &after);
        assert_eq!(changed, set(&["n2", "n3"]));
        let nodes_of: BTreeMap<String, BTreeSet<String>> = [
            ("a".into(), set(&["n1"])),
            ("b".into(), set(&["n1", "n2"])),
            ("c".into(), set(&["n3"])),
        ]
        .into();
        assert_eq!(services_on(&nodes_of, &changed), ["b", "c"]);
        assert!(services_on(&nodes_of, &set(&[])).is_empty());
    }
}
