//! The supervisor's side of the virtual IPs: keeps each service's port chains listing exactly
//! its ready replicas. When readiness changes it rewrites only the chains of the services
//! that changed, in one nft transaction (computed by `plumb_core::firewall::vips`); it never
//! lists or replaces the table, so established connections keep their NAT bindings.

use std::collections::{BTreeMap, BTreeSet};

use plumb_core::firewall::vips;

#[derive(Default)]
pub struct Balancer {
    layout: Option<vips::Balancer>,
    /// The unready replicas each service's chains were last written for.
    written: BTreeMap<String, BTreeSet<String>>,
}

impl Balancer {
    /// A new `run.json`: every service's chains are written again from `unready` (`up` may
    /// have written them from an older view), but those of services without a process among
    /// their replicas (`supervised` lists the containers with one): those are always all
    /// ready, as `up` wrote them, so a stack without processes costs its supervisor no nft run.
    pub fn reload(
        &mut self,
        layout: Option<vips::Balancer>,
        unready: &BTreeSet<String>,
        supervised: &BTreeSet<String>,
        apply: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<(), String> {
        self.layout = layout;
        self.written.clear();
        for svc in self.layout.iter().flat_map(|l| &l.services) {
            if !svc.endpoints.iter().any(|e| supervised.contains(&e.container)) {
                self.written.insert(svc.name.clone(), BTreeSet::new());
            }
        }
        self.follow(unready, apply)
    }

    /// Rewrites the chains of the services whose ready replicas are not those last written,
    /// in one transaction (`apply` runs an nft script); nothing when none changed. A failed
    /// transaction is not retried until the next change or reload.
    pub fn follow(
        &mut self,
        unready: &BTreeSet<String>,
        apply: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<(), String> {
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
        let script: String = layout.update(changed, unready).into_iter().map(|c| c + "\n").collect();
        apply(&script)
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

    fn run(b: &mut Balancer, unready: &[&str]) -> Option<String> {
        let unready: BTreeSet<String> = unready.iter().map(|s| s.to_string()).collect();
        let mut seen = None;
        b.follow(&unready, |script| {
            seen = Some(script.to_string());
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn only_a_change_is_written_and_only_its_services_chains() {
        let mut b = Balancer::default();
        let mut first = None;
        let supervised: BTreeSet<String> = ["web-1", "web-2", "db-1"].map(String::from).into();
        b.reload(Some(layout()), &BTreeSet::new(), &supervised, |s| {
            first = Some(s.to_string());
            Ok(())
        })
        .unwrap();
        let first = first.expect("a reload writes every service");
        assert!(first.contains("svc_web_tcp_80") && first.contains("svc_db_tcp_5432"));
        assert_eq!(run(&mut b, &[]), None);
        let script = run(&mut b, &["web-2"]).expect("web changed");
        assert!(!script.contains("db"), "{script}");
        assert!(script.contains("flush chain inet plumb_s svc_web_tcp_80\n"));
        assert!(script.contains("goto ep_web-1 comment"));
        assert_eq!(run(&mut b, &["web-2"]), None);
        assert!(run(&mut b, &[]).unwrap().contains("numgen inc mod 2"));
    }

    #[test]
    fn without_virtual_ips_nothing_is_written() {
        let mut b = Balancer::default();
        b.reload(None, &BTreeSet::new(), &BTreeSet::new(), |_| panic!("nothing to write"))
            .unwrap();
        assert_eq!(run(&mut b, &["x"]), None);
    }

    #[test]
    fn services_without_processes_are_not_rewritten_on_reload() {
        let mut b = Balancer::default();
        let mut script = None;
        let supervised: BTreeSet<String> = ["db-1"].map(String::from).into();
        b.reload(Some(layout()), &BTreeSet::new(), &supervised, |s| {
            script = Some(s.to_string());
            Ok(())
        })
        .unwrap();
        let script = script.expect("db has a process");
        assert!(
            script.contains("svc_db_tcp_5432") && !script.contains("web"),
            "{script}"
        );
        b.reload(Some(layout()), &BTreeSet::new(), &BTreeSet::new(), |_| {
            panic!("nothing to write")
        })
        .unwrap();
    }
}
