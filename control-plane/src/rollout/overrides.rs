//! How held rollouts enter snapshots: each replaces its service's default
//! split in the config the snapshots are computed from.

use std::collections::BTreeMap;
use std::sync::Arc;

use tether_api::SplitTarget;

use crate::config::MeshConfig;

/// The split each held rollout imposes, by service.
pub type Overrides = BTreeMap<String, Vec<SplitTarget>>;

/// `config` with the overrides' splits in place of the services' own
/// (only where both subsets are still defined).
pub fn apply(config: &Arc<MeshConfig>, overrides: &Overrides) -> Arc<MeshConfig> {
    if overrides.is_empty() {
        return Arc::clone(config);
    }
    let mut effective = (**config).clone();
    for (name, split) in overrides {
        if let Some(service) = effective.services.get_mut(name) {
            if split
                .iter()
                .all(|t| service.subsets.contains_key(&t.subset))
            {
                service.split = split.clone();
            }
        }
    }
    Arc::new(effective)
}
