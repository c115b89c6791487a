//! Names of the kernel objects plumb makes. Interface names must fit IFNAMSIZ (15 bytes), so
//! they are a readable prefix plus a stable hash of their owner; the readable owner goes in
//! the link's alias (`plumb:STACK/OBJECT`), so the kernel itself records who made what.

use crate::mac::Mac;

/// Every plumb bridge name starts with this; nft isolation rules match on it.
pub const BRIDGE_PREFIX: &str = "plb";
/// Every host-side veth name starts with this.
pub const VETH_PREFIX: &str = "plv";

/// `web-2`: replica `replica` (1-based) of `service`.
pub fn container(service: &str, replica: u32) -> String {
    format!("{service}-{replica}")
}

/// `shop-web-2`: the file under /run/netns holding the container's network namespace.
pub fn netns(stack: &str, container: &str) -> String {
    format!("{stack}-{container}")
}

/// `eth0`, `eth1`, ...: the container's interface on its `index`-th network.
pub fn container_ifname(index: usize) -> String {
    format!("eth{index}")
}

/// `plb` + 8 hex digits: the bridge of one network of one stack.
pub fn bridge(stack: &str, network: &str) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", fnv1a(&[stack, "/", network]) as u32)
}

/// `plv` + 10 hex digits: the host end of a container's veth on one network.
pub fn host_veth(stack: &str, container: &str, network: &str) -> String {
    format!(
        "{VETH_PREFIX}{:010x}",
        fnv1a(&[stack, "/", container, "/", network]) & 0xff_ffff_ffff
    )
}

/// The link alias that marks an object as plumb's: `plumb:shop/net/frontend`.
pub fn alias(stack: &str, object: &str) -> String {
    label(&format!("plumb:{stack}/{object}"), ALIAS_MAX)
}

/// The kernel keeps link aliases of at most this many bytes (IFALIASZ less the final NUL).
pub const ALIAS_MAX: usize = 255;
/// nft keeps rule comments of at most this many bytes.
pub const COMMENT_MAX: usize = 128;
/// nft keeps log prefixes of at most this many bytes.
pub const LOG_PREFIX_MAX: usize = 127;

/// `text` made safe as a label the kernel keeps and prints: an nft comment or log prefix, a
/// link alias. Every such string goes through here. Control characters (a newline in a log
/// prefix would start a kernel log line of the stack file's choosing) become `?`; a double
/// quote (it ends an nft string) becomes `'`; a backslash becomes `/`. A label longer than
/// `max` bytes is cut at a character boundary and ends with `...`.
pub fn label(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| match c {
            c if c.is_control() => '?',
            '"' => '\'',
            '\\' => '/',
            c => c,
        })
        .collect();
    if out.len() > max {
        let mut at = max.saturating_sub(3);
        while !out.is_char_boundary(at) {
            at -= 1;
        }
        out.truncate(at);
        out.push_str("...");
    }
    out
}

/// The stack and object an alias `plumb:STACK/OBJECT` names (`None`: not plumb's mark).
pub fn parse_alias(alias: &str) -> Option<(&str, &str)> {
    alias.strip_prefix("plumb:")?.split_once('/')
}

/// The alias prefix shared by every object of one stack.
pub fn alias_prefix(stack: &str) -> String {
    format!("plumb:{stack}/")
}

/// A locally administered unicast MAC address derived from `owner` (a link's alias), so a
/// bridge keeps its address as ports come and go and a container's interface has the address
/// the anti-spoofing sets expect.
pub fn mac(owner: &str) -> Mac {
    let h = fnv1a(&[owner]).to_be_bytes();
    Mac([0x02, h[0], h[1], h[2], h[3], h[4]])
}

/// The interface group a stack's links are put in just before they are deleted together:
/// `0x7000_0000` plus 24 bits of the stack's hash, far from the small groups people use.
pub fn link_group(stack: &str) -> u32 {
    0x7000_0000 | (fnv1a(&["group/", stack]) as u32 & 0x00ff_ffff)
}

/// The nft table (family inet) holding all of one stack's rules.
pub fn nft_table(stack: &str) -> String {
    format!("plumb_{}", stack.replace('-', "_"))
}

/// Every chaos tap (the relay's door back into a bridge) starts with this.
pub const TAP_PREFIX: &str = "plc";

/// `plc` + 10 hex digits: the tap through which fault `fault`'s relay hands one container
/// interface's frames back to its bridge.
pub fn chaos_tap(stack: &str, fault: u32, container: &str, ifname: &str) -> String {
    let id = fault.to_string();
    format!(
        "{TAP_PREFIX}{:010x}",
        fnv1a(&[stack, "/chaos/", &id, "/", container, "/", ifname]) & 0xff_ffff_ffff
    )
}

/// `plumbchaos3_shop`: the nft tables (inet and bridge) of one partition fault. They start
/// apart from the stack's own `plumb_STACK` tables, so `up` never takes them for its own.
pub fn chaos_table(stack: &str, fault: u32) -> String {
    format!("plumbchaos{fault}_{}", stack.replace('-', "_"))
}

/// True if `table` is one of `stack`'s chaos tables (whatever its fault number).
pub fn is_chaos_table(table: &str, stack: &str) -> bool {
    table
        .strip_prefix("plumbchaos")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(id, name)| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && name == stack.replace('-', "_")
        })
}

/// 64-bit FNV-1a: tiny, and stable across Rust releases (unlike `DefaultHasher`).
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_hold_no_control_characters_quotes_or_backslashes() {
        let forged = "a\nkernel: forged line\r\t\u{1b}[31m \"q\" back\\slash \u{85}";
        let l = label(forged, 200);
        assert!(!l.chars().any(char::is_control), "{l:?}");
        assert!(!l.contains('"') && !l.contains('\\'), "{l:?}");
        assert_eq!(l, "a?kernel: forged line???[31m 'q' back/slash ?");
        // Already safe text is kept as it is.
        assert_eq!(label("plumb:shop/net/front", 200), "plumb:shop/net/front");
    }

    #[test]
    fn long_labels_are_cut_at_a_character_boundary() {
        let l = label(&"é".repeat(100), 20);
        assert!(l.len() <= 20 && l.ends_with("..."), "{l:?}");
        assert_eq!(label("abc", 3), "abc");
        assert!(alias("s", &"x".repeat(400)).len() <= ALIAS_MAX);
        assert!(!alias("s\nt", "net/a").contains('\n'));
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        assert_eq!(bridge("a-very-long-", "network-name-that-is-long").len(), 11);
        assert_eq!(host_veth("stack", "service-12345", "net").len(), 13);
    }

    #[test]
    fn names_are_stable_and_distinct() {
        assert_eq!(bridge("shop", "frontend"), bridge("shop", "frontend"));
        assert_ne!(bridge("shop", "frontend"), bridge("shop", "backend"));
        assert_ne!(host_veth("shop", "web-1", "a"), host_veth("shop", "web-2", "a"));
        assert_ne!(host_veth("a", "b-c", "n"), host_veth("a-b", "c", "n"));
        assert_eq!(nft_table("my-app"), "plumb_my_app");
    }
}
