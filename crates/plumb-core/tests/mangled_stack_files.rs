//! Bad input gets an error, never a panic: thousands of stack files mangled at random
//! (characters deleted, repeated, replaced by ones that matter to TOML or to byte offsets:
//! quotes, brackets, `=`, newlines, NUL, multi-byte letters) are parsed, validated, resolved
//! and their errors drawn, with a fixed seed so a failure can be replayed.

use plumb_core::desired::resolve;
use plumb_core::diag::Style;
use plumb_core::spec::parse;

const SEEDS: &[&str] = &[
    include_str!("../../../examples/shop/plumb.toml"),
    r#"name = "hello"
[networks.front]
subnet = "10.89.1.0/24"
[networks.back]
subnet = "10.89.2.0/24"
internal = true
[services.web]
networks = ["front", "back"]
ports = ["8080:80", "127.0.0.1:5353:53/udp"]
cap_add = ["NET_ADMIN"]
[services.api]
networks = { back = { ip = "10.89.2.9" } }
replicas = 2
command = ["sleep", "60"]
env = { A = "1" }
[services.api.health]
tcp = 80
interval = "1s"
[services.web.autoscale]
min = 2
max = 5
requests_per_second = 200
scale_down_window = "30s"
"#,
];

const PIECES: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "\n",
    "\0",
    "é",
    "ß",
    "🚀",
    "\t",
    "#",
    "\\",
    "0",
    "-1",
    "99999999999999999999",
    "/",
    ":",
    "x",
];

/// xorshift64: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mangle(text: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<String> = text.chars().map(String::from).collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len());
        match rng.below(3) {
            0 if !chars.is_empty() => {
                chars.remove(at);
            }
            1 => chars.insert(at, PIECES[rng.below(PIECES.len())].to_string()),
            _ => {
                if let Some(c) = chars.get(at).cloned() {
                    chars.insert(at, c);
                }
            }
        }
    }
    chars.concat()
}

#[test]
fn mangled_stack_files_get_errors_not_panics() {
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let mut rejected = 0;
    for round in 0..3000 {
        let text = mangle(SEEDS[round % SEEDS.len()], &mut rng);
        match parse("plumb.toml", &text) {
            Ok(parsed) => {
                // Whatever parses also resolves or says why.
                let _ = resolve(&parsed, &Default::default());
            }
            Err(errors) => {
                rejected += 1;
                for style in [Style::Plain, Style::Coloured] {
                    let drawn = errors.render(style);
                    assert!(!drawn.is_empty(), "an empty error for:\n{text}");
                }
            }
        }
    }
    assert!(
        rejected > 1000,
        "the mangling should break most files ({rejected} rejected)"
    );
}
