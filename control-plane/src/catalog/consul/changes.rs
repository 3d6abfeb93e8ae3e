//! Which services to read again, from two successive answers of Consul's
//! list of checks not passing (`/v1/health/state/any` filtered) or node
//! list (`/v1/catalog/nodes`),
//! or from a node's instances (`/v1/catalog/node-services/<node>`) against
//! what the services' last reads saw.
//!
//! What moves which of Consul's indexes (checked against Consul 1.14): a
//! check's status or output moves only the check index; a registration,
//! deregistration or re-registration (address, port, tags, meta, weights)
//! only the service index (and the check index when it adds or removes a
//! check); a node's address or meta only the node index. A node's address
//! and meta reach every instance on it that has no address of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::api::{CheckEntry, NodeEntry, NodeService};

/// Per node, the instances the services' last reads saw there: ID → service.
pub type OnNode = BTreeMap<String, BTreeMap<String, String>>;

/// The checks not passing, reduced to what tells a change: per (node,
/// check ID), the service it checks ("" for a node check) and its status.
/// An instance passes when none of its node's checks and its own is in
/// it, so a change to this set is a change to which instances pass; a
/// passing check's output, or one added or removed passing, changes none.
pub type Checks = HashMap<(String, String), (String, String)>;

/// The node list, reduced: each node's modify index.
pub type Nodes = HashMap<String, u64>;

/// Reduces a check list answer.
pub fn checks(entries: Vec<CheckEntry>) -> Checks {
    entries
        .into_iter()
        .map(|c| ((c.node, c.check_id), (c.service, c.status)))
        .collect()
}

/// Reduces a node list answer.
pub fn nodes(entries: Vec<NodeEntry>) -> Nodes {
    entries
        .into_iter()
        .map(|n| (n.node, n.modify_index))
        .collect()
}

/// What differs between two lists of checks not passing: the services
/// whose own checks entered, left or changed status, and the nodes whose
/// node checks did.
pub fn changed_checks(before: &Checks, after: &Checks) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut services, mut nodes) = (BTreeSet::new(), BTreeSet::new());
    let mut note = |(node, _): &(String, String), (service, _): &(String, String)| {
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
pub fn services_on(on_node: &OnNode, nodes: &BTreeSet<String>) -> BTreeSet<String> {
    nodes
        .iter()
        .filter_map(|node| on_node.get(node))
        .flat_map(|instances| instances.values().cloned())
        .collect()
}

/// The services to read again after listing a node's instances: those
/// with an instance changed since their last read (its modify index above
/// the index that read answered with), or not read yet, and those whose
/// last read saw an instance there that is gone. Sound without keeping an
/// old listing: a read reflects every change up to its index.
pub fn changed_on_node(
    listing: &[NodeService],
    seen_there: Option<&BTreeMap<String, String>>,
    read_at: &BTreeMap<String, u64>,
) -> BTreeSet<String> {
    let mut changed: BTreeSet<String> = listing
        .iter()
        .filter(|i| {
            read_at
                .get(&i.service)
                .is_none_or(|&at| i.modify_index > at)
        })
        .map(|i| i.service.clone())
        .collect();
    for (id, service) in seen_there.into_iter().flatten() {
        if !listing.iter().any(|i| &i.id == id && &i.service == service) {
            changed.insert(service.clone());
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(node: &str, id: &str, service: &str, status: &str) -> CheckEntry {
        CheckEntry {
            node: node.into(),
            check_id: id.into(),
            service: service.into(),
            status: status.into(),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|i| (*i).to_owned()).collect()
    }

    #[test]
    fn check_changes_name_their_services_and_node_checks_their_nodes() {
        let before = checks(vec![
            check("n1", "serfHealth", "", "critical"),
            check("n1", "c:a1", "a", "warning"),
            check("n1", "c:b1", "b", "critical"),
            check("n2", "c:c1", "c", "critical"),
        ]);
        let after = checks(vec![
            check("n1", "serfHealth", "", "critical"),
            check("n1", "c:a1", "a", "critical"), // status changed
            check("n2", "c:c1", "c", "critical"), // unchanged
            check("n2", "c:d1", "d", "critical"), // stopped passing
            check("n2", "serfHealth", "", "warning"), // the node stopped passing
        ]); // b's check passes again (or is gone)
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
        let on_node: OnNode = [
            (
                "n1".into(),
                [("a1".into(), "a".into()), ("b1".into(), "b".into())].into(),
            ),
            ("n2".into(), [("b2".into(), "b".into())].into()),
            ("n3".into(), [("c1".into(), "c".into())].into()),
        ]
        .into();
        assert_eq!(services_on(&on_node, &changed), set(&["b", "c"]));
        assert!(services_on(&on_node, &set(&[])).is_empty());
    }

    fn listed(id: &str, service: &str, index: u64) -> NodeService {
        NodeService {
            id: id.into(),
            service: service.into(),
            modify_index: index,
        }
    }

    #[test]
    fn a_node_listing_names_services_changed_since_their_last_read() {
        let read_at: BTreeMap<String, u64> = [
            ("a".into(), 10),
            ("b".into(), 10),
            ("c".into(), 10),
            ("d".into(), 10),
        ]
        .into();
        let seen: BTreeMap<String, String> = [
            ("a1".into(), "a".into()),
            ("b1".into(), "b".into()),
            ("c1".into(), "c".into()),
            ("d1".into(), "d".into()),
        ]
        .into();
        let listing = [
            listed("a1", "a", 7),  // as read
            listed("b1", "b", 12), // re-registered since
            listed("d1", "d", 10), // as read
            listed("d2", "d", 11), // added since
            listed("e1", "e", 3),  // a service not read yet
        ]; // c1 is gone
        assert_eq!(
            changed_on_node(&listing, Some(&seen), &read_at),
            set(&["b", "c", "d", "e"])
        );
        assert_eq!(
            changed_on_node(&[], None, &read_at),
            set(&[]),
            "an empty node we knew nothing on"
        );
    }
}
