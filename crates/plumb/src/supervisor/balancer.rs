//! The supervisor's side of the virtual IPs: keeps each service's slots naming exactly its
//! ready replicas. When readiness changes it refills only the slots of the services that
//! changed, as element edits in one netlink batch (computed by `plumb_core::firewall::vips`);
//! it never lists or replaces the table, so established connections keep their NAT bindings.

use std::collections::{BTreeMap, BTreeSet};

use plumb_core::firewall::{vips, ElementEdit, TableId};

/// Applies element edits to a table, atomically.
pub type Apply<'a> = &'a mut dyn FnMut(&TableId, &[ElementEdit]) -> Result<(), String>;

#[derive(Default)]
pub struct Balancer {
    layout: Option<vips::Balancer>,
    /// The unready replicas each service's slots were last written for.
    written: BTreeMap<String, BTreeSet<String>>,
}

impl Balancer {
    /// A new `run.json`: every service's slots are written again from `unready` (`up` may
    /// have written them from an older view).
    pub fn reload(
        &mut self,
        layout: Option<vips::Balancer>,
        unready: &BTreeSet<String>,
        apply: Apply,
    ) -> Result<(), String> {
        self.layout = layout;
        self.written.clear();
        self.follow(unready, apply)
    }

    /// Refills the slots of the services whose ready replicas are not those last written, in
    /// one transaction; nothing when none changed. A failed transaction is not retried until
    /// the next change or reload.
    pub fn follow(&mut self, unready: &BTreeSet<String>, apply: Apply) -> Result<(), String> {
        let Some(layout) = &self.layout else {
            return Ok(());
        };
        let mut changed = Vec::new();
        for svc in &layout.services {
            let now: BTreeSet<String> = svc
                .endpoints
                .iter()
                .filter(|e| unready.contains(&e.container))
                .map(|e| e.container.clone())
                .collect();
            if self.written.get(&svc.name) != Some(&now) {
                changed.push(svc.name.as_str());
                self.written.insert(svc.name.clone(), now);
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        apply(&layout.table, &layout.update(changed, unready))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_core::desired::resolve;
    use plumb_core::spec::parse;

    fn layout() -> vips::Balancer {
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n\
            [services.web]\nreplicas = 2\nexpose = [80]\n[services.db]\nexpose = [5432]\n";
        let d = resolve(&parse("f", text).unwrap(), &Default::default()).unwrap().0;
        vips::Balancer::of(&d)
    }

    /// What one `follow` sends, as nft commands.
    fn run(b: &mut Balancer, unready: &[&str]) -> Option<String> {
        let unready: BTreeSet<String> = unready.iter().map(|s| s.to_string()).collect();
        let mut seen = None;
        b.follow(&unready, &mut |table, edits| {
            seen = Some(edits.iter().map(|e| e.command(table) + "\n").collect());
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn only_a_change_is_written_and_only_its_services_slots() {
        let mut b = Balancer::default();
        let mut first = None;
        b.reload(Some(layout()), &BTreeSet::new(), &mut |table, edits| {
            first = Some(edits.iter().map(|e| e.command(table)).collect::<Vec<_>>());
            Ok(())
        })
        .unwrap();
        let first = first.expect("a reload writes every service");
        assert!(first
            .iter()
            .any(|c| c.starts_with("add element inet plumb_s eps_web { 0 : goto ep_web-1, 1 : goto ep_web-2")));
        assert!(first
            .iter()
            .any(|c| c.starts_with("add element inet plumb_s eps_db { 0 : goto ep_db-1, 1 : goto ep_db-1")));
        assert_eq!(run(&mut b, &[]), None);
        let script = run(&mut b, &["web-2"]).expect("web changed");
        assert!(!script.contains("db"), "{script}");
        assert!(
            script.starts_with("delete element inet plumb_s eps_web { 0, 1, "),
            "{script}"
        );
        assert!(script.contains("add element inet plumb_s eps_web { 0 : goto ep_web-1, 1 : goto ep_web-1, "));
        assert!(!script.contains("ep_web-2"), "{script}");
        assert_eq!(run(&mut b, &["web-2"]), None);
        assert!(run(&mut b, &[]).unwrap().contains("1 : goto ep_web-2"));
    }

    #[test]
    fn without_virtual_ips_nothing_is_written() {
        let mut b = Balancer::default();
        b.reload(None, &BTreeSet::new(), &mut |_, _| panic!("nothing to write"))
            .unwrap();
        assert_eq!(run(&mut b, &["x"]), None);
    }
}
