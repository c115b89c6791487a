//! The checks on what a service's process is given: its capabilities (`cap_add`, `cap_drop`),
//! its environment, and the text that reaches the kernel as C strings (command, env, workdir,
//! user), which cannot hold a NUL byte.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::super::capabilities::{closest_name, parse_name, Capabilities, CapabilityName};
use super::super::raw::{RawTable, RawValue};
use super::Validator;

/// Variables whose names start with this are plumb's own (`PLUMB_STACK`, `PLUMB_ADDRS_WEB`).
const PLUMB_PREFIX: &str = "PLUMB_";

const NUL_HINT: &str = "remove the \\u0000: the kernel takes this as a C string, which ends at the first NUL";

impl Validator<'_> {
    /// The capabilities a service's processes get from its `cap_add` and `cap_drop`.
    pub(super) fn capabilities(
        &mut self,
        field: &str,
        add: Option<&Spanned<RawValue>>,
        drop: Option<&Spanned<RawValue>>,
    ) -> Capabilities {
        let add = self.capability_names(field, "cap_add", add);
        let drop = self.capability_names(field, "cap_drop", drop);
        Capabilities::docker(&add, &drop)
    }

    fn capability_names(&mut self, field: &str, key: &str, raw: Option<&Spanned<RawValue>>) -> Vec<CapabilityName> {
        let Some(raw) = raw else { return Vec::new() };
        let field = format!("{field}.{key}");
        let RawValue::Array(items) = raw.get_ref() else {
            self.err(
                raw.span(),
                &field,
                format!("{key} must be a list of capability names"),
                format!("e.g. {key} = [\"NET_ADMIN\"]"),
            );
            return Vec::new();
        };
        let mut names = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            let Some(text) = item.get_ref().as_str() else {
                self.err(
                    item.span(),
                    &item_field,
                    "a capability name must be a string",
                    "e.g. \"NET_ADMIN\"",
                );
                continue;
            };
            match parse_name(text) {
                Some(name) => names.push(name),
                None => {
                    let hint = match closest_name(text) {
                        Some(known) => format!("did you mean \"{known}\"? (names of capabilities(7), with or without CAP_, or \"ALL\")"),
                        None => "use a name of capabilities(7), with or without CAP_ (\"NET_ADMIN\", \"CAP_SYS_TIME\"), or \"ALL\"".to_string(),
                    };
                    self.err(item.span(), &item_field, format!("unknown capability {text:?}"), hint);
                }
            }
        }
        names
    }

    /// The environment table: names a process can be given and plumb does not set itself;
    /// values that are text without NUL bytes.
    pub(super) fn env(&mut self, field: &str, table: &RawTable) -> BTreeMap<String, String> {
        let efield = format!("{field}.env");
        let mut env = BTreeMap::new();
        for (key, value) in table {
            let name = key.get_ref();
            if let Some((message, hint)) = env_name_problem(name) {
                self.err(key.span(), &efield, message, hint);
                continue;
            }
            let vfield = format!("{efield}.{name}");
            let text = match value.get_ref() {
                RawValue::String(s) => s.clone(),
                RawValue::Integer(i) => i.to_string(),
                RawValue::Float(f) => f.to_string(),
                RawValue::Boolean(b) => b.to_string(),
                RawValue::Array(_) | RawValue::Table(_) => {
                    self.err(
                        value.span(),
                        &vfield,
                        "environment values must be strings, numbers or booleans",
                        "env = { LEVEL = \"debug\" }",
                    );
                    continue;
                }
            };
            if self.nul_in(value.span(), &vfield, &format!("the value of {name}"), &text) {
                continue;
            }
            env.insert(name.clone(), text);
        }
        env
    }

    /// Reports a NUL byte in `text` (`what` names it); true if there is one.
    pub(super) fn nul_in(&mut self, span: Range<usize>, field: &str, what: &str, text: &str) -> bool {
        let found = text.contains('\0');
        if found {
            self.err(span, field, format!("{what} contains a NUL byte"), NUL_HINT);
        }
        found
    }

    /// Reports a NUL byte in a command written as a string or a list; true if there is one.
    pub(super) fn nul_in_command(&mut self, field: &str, what: &str, raw: &Spanned<RawValue>) -> bool {
        match raw.get_ref() {
            RawValue::String(s) => self.nul_in(raw.span(), field, what, s),
            RawValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let text = item.get_ref().as_str().unwrap_or_default();
                self.nul_in(item.span(), field, &format!("argument {i} of {what}"), text)
            }),
            _ => false,
        }
    }
}

/// What is wrong with an environment variable's name, and the fix; `None` if nothing.
fn env_name_problem(name: &str) -> Option<(String, String)> {
    let problem = if name.is_empty() {
        (
            "an environment variable needs a name".to_string(),
            "write NAME = \"value\", e.g. env = { LEVEL = \"debug\" }".to_string(),
        )
    } else if name.contains('=') {
        (
            format!("environment variable name {name:?} contains '='"),
            "'=' separates a variable's name from its value: rename it".to_string(),
        )
    } else if name.chars().any(char::is_control) {
        (
            format!("environment variable name {name:?} contains a control character"),
            "use letters, digits and '_', e.g. LOG_LEVEL".to_string(),
        )
    } else if name.starts_with(PLUMB_PREFIX) {
        (
            format!("{name} is set by plumb"),
            "names starting with PLUMB_ are plumb's own (PLUMB_STACK, PLUMB_SERVICE, PLUMB_REPLICA, PLUMB_ADDRS_<SVC>): use another name".to_string(),
        )
    } else {
        return None;
    };
    Some(problem)
}

#[cfg(test)]
mod tests {
    use super::super::super::parse;
    use super::*;

    const NET: &str = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n";

    fn errors(text: &str) -> String {
        match parse("plumb.toml", text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn capabilities_are_named_as_in_docker() {
        let p = parse(
            "f",
            &format!("{NET}[services.a]\ncommand = \"x\"\ncap_add = [\"net_admin\", \"CAP_SYS_TIME\"]\ncap_drop = [\"MKNOD\"]\n"),
        )
        .unwrap();
        let caps = p.stack.services["a"].process.as_ref().unwrap().capabilities;
        let root: Vec<_> = caps.root.names().collect();
        assert!(root.contains(&"NET_ADMIN") && root.contains(&"SYS_TIME") && !root.contains(&"MKNOD"));
        assert_eq!(caps.user.names().collect::<Vec<_>>(), ["NET_ADMIN", "SYS_TIME"]);
        let plain = parse("f", &format!("{NET}[services.a]\ncommand = \"x\"\n")).unwrap();
        assert_eq!(
            plain.stack.services["a"].process.as_ref().unwrap().capabilities,
            Capabilities::default()
        );
    }

    #[test]
    fn unknown_capabilities_are_refused_at_the_name() {
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\ncap_add = [\"KILL\", \"NET_ADMINN\"]\n"
        ));
        assert!(
            e.starts_with("plumb.toml:6:20: services.a.cap_add[1]: unknown capability \"NET_ADMINN\"")
                && e.contains("did you mean \"NET_ADMIN\"?"),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.a]\ncommand = \"x\"\ncap_drop = \"ALL\"\n"));
        assert!(e.contains("services.a.cap_drop: cap_drop must be a list"), "{e}");
        let e = errors(&format!("{NET}[services.a]\ncap_add = [\"KILL\"]\n"));
        assert!(e.contains("cap_add needs a command"), "{e}");
    }

    #[test]
    fn environment_names_must_be_usable_and_not_plumbs() {
        for (key, problem) in [
            ("\"\"", "needs a name"),
            ("\"A=B\"", "contains '='"),
            ("\"A\\nB\"", "contains a control character"),
            ("PLUMB_SERVICE", "PLUMB_SERVICE is set by plumb"),
            ("PLUMB_ADDRS_X", "is set by plumb"),
        ] {
            let e = errors(&format!(
                "{NET}[services.a]\ncommand = \"x\"\nenv = {{ {key} = \"1\" }}\n"
            ));
            assert!(
                e.starts_with("plumb.toml:6:9: services.a.env: ") && e.contains(problem),
                "{e}"
            );
        }
        // Case matters in names: plumb_x is not plumb's.
        parse(
            "f",
            &format!("{NET}[services.a]\ncommand = \"x\"\nenv = {{ plumb_x = \"1\", B = \"a\\nb\" }}\n"),
        )
        .unwrap();
    }

    #[test]
    fn nul_bytes_are_refused_where_they_are() {
        let e = errors(&format!("{NET}[services.a]\ncommand = [\"echo\", \"a\\u0000b\"]\n"));
        assert!(
            e.starts_with("plumb.toml:5:20: services.a.command: argument 1 of command contains a NUL byte"),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.a]\ncommand = \"echo a\\u0000b\"\n"));
        assert!(e.contains("services.a.command: command contains a NUL byte"), "{e}");
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\nenv = {{ A = \"1\\u0000\" }}\n"
        ));
        assert!(
            e.contains("services.a.env.A: the value of A contains a NUL byte"),
            "{e}"
        );
        for key in ["workdir", "user"] {
            let e = errors(&format!("{NET}[services.a]\ncommand = \"x\"\n{key} = \"a\\u0000\"\n"));
            assert!(
                e.contains("plumb.toml:6:") && e.contains(&format!("services.a.{key}: {key} contains a NUL byte")),
                "{e}"
            );
        }
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\nhealth = {{ exec = [\"a\\u0000\"] }}\n"
        ));
        assert!(
            e.contains("services.a.health.exec: argument 0 of exec contains a NUL byte"),
            "{e}"
        );
    }
}
