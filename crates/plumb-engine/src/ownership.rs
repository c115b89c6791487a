//! A stack never touches another stack's objects. Names keep the documented `STACK-SVC-k`
//! shape (as Compose does), so two stacks can want the same name (`a` with service `b-c`,
//! `a-b` with service `c`: both `a-b-c-1`); such an `up` is refused before anything is made,
//! naming the stack that owns the name, as Docker refuses a container name in use.

use std::collections::BTreeMap;

use plumb_core::Desired;

use crate::error::Error;

/// The wanted namespace names that another stack owns: from the other stacks' records
/// (`claims`, before anything is touched) or from the kernel's own marks (`foreign`, found by
/// observing). Name → owning stack.
pub fn conflicts(
    desired: &Desired,
    claims: &BTreeMap<String, String>,
    foreign: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    desired
        .containers
        .iter()
        .filter_map(|c| {
            let owner = claims.get(&c.netns).or_else(|| foreign.get(&c.netns))?;
            Some((c.netns.clone(), owner.clone()))
        })
        .collect()
}

/// The error for an `up` whose names are taken, or `None`.
pub fn refusal(desired: &Desired, taken: &BTreeMap<String, String>) -> Option<Error> {
    let (name, owner) = taken.iter().next()?;
    let more = match taken.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let container = name.strip_prefix(&format!("{}-", desired.stack)).unwrap_or(name);
    Some(
        Error::new(format!(
            "stack {}: container {container} would be namespace {name}, which stack {owner} already uses{more}",
            desired.stack
        ))
        .hint("rename the service or the stack, or `plumb down` the other stack first; nothing was changed"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_core::desired::resolve;
    use plumb_core::spec::parse;

    fn desired(text: &str) -> Desired {
        resolve(&parse("f", text).unwrap(), &Default::default()).unwrap().0
    }

    #[test]
    fn a_name_claimed_by_another_stack_is_refused_naming_it() {
        let a = desired("name = \"a\"\n[services.b-c]\n");
        let claims = BTreeMap::from([("a-b-c-1".to_string(), "a-b".to_string())]);
        let taken = conflicts(&a, &claims, &BTreeMap::new());
        let err = refusal(&a, &taken).unwrap();
        assert!(
            err.message.contains("namespace a-b-c-1, which stack a-b already uses"),
            "{err}"
        );
        assert!(refusal(&a, &conflicts(&a, &BTreeMap::new(), &BTreeMap::new())).is_none());
    }
}
