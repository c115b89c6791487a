//! `plumb bench`'s pure parts: the URL it loads, the open-loop schedule (which request is sent
//! when, by which connection), where a response says which replica served it, and the SVG
//! of latency over time. The load itself (sockets, threads) is the binary's.

use std::fmt::Write as _;
use std::time::Duration;

/// An `http://HOST[:PORT][/PATH]` URL; HOST is an IPv4 address or a name (a service, a
/// container, or a host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// The path and query, as sent on the request line (at least "/").
    pub path: String,
}

impl Url {
    /// The Host header: the host, and the port when it is not 80.
    pub fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `http://HOST[:PORT][/PATH][?QUERY]`; the error says what is wrong.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let rest = match text.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => return Err("https is not supported (plain HTTP/1.1 only)".into()),
        Some((scheme, _)) => return Err(format!("scheme {scheme:?} is not supported, only http://")),
        None => return Err("it has no scheme; write it as http://HOST[:PORT]/PATH".into()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let path = path.split('#').next().unwrap_or("/").to_string();
    if authority.contains('@') {
        return Err("user:password@ is not supported".into());
    }
    if authority.starts_with('[') {
        return Err("IPv6 addresses are not supported".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {port:?} is not a number from 1 to 65535"))?;
            (host, port)
        }
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !host.chars().all(allowed) {
        return Err(format!("host {host:?} has characters a host name cannot have"));
    }
    if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err("the path has spaces or control characters; percent-encode them".into());
    }
    Ok(Url {
        host: host.to_string(),
        port,
        path,
    })
}

/// Open loop: `total` requests at fixed intervals of `1/rate`, request k at `k/rate` after
/// the start, sent by connection `k % connections` (so each connection sends every
/// `connections/rate`). Latency counts from the scheduled time, not from the actual send, so
/// a server (or a load generator) that falls behind shows as latency instead of hiding it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub rate: f64,
    pub connections: usize,
    pub total: u64,
}

impl Schedule {
    /// `rate` requests per second for `duration` (rounded down to whole requests).
    pub fn new(rate: f64, duration: Duration, connections: usize) -> Schedule {
        let total = (rate * duration.as_secs_f64() + 1e-9).floor() as u64;
        Schedule {
            rate,
            connections,
            total,
        }
    }

    /// How many requests connection `c` sends.
    pub fn count(&self, c: usize) -> u64 {
        let (c, n) = (c as u64, self.connections as u64);
        if c >= self.total {
            0
        } else {
            (self.total - c).div_ceil(n)
        }
    }

    /// When connection `c` sends its `j`th request, after the start.
    pub fn at(&self, c: usize, j: u64) -> Duration {
        let k = c as u64 + j * self.connections as u64;
        Duration::from_secs_f64(k as f64 / self.rate)
    }
}

/// The replica a response names: its `X-Served-By` header if it has one (given here), else
/// a `"served_by": "NAME"` field in its JSON body (the shop's services say so), else none.
pub fn served_by<'a>(header: Option<&'a str>, body: &'a [u8]) -> Option<&'a str> {
    if let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) {
        return Some(h);
    }
    const FIELD: &[u8] = b"\"served_by\"";
    let at = body.windows(FIELD.len()).position(|w| w == FIELD)?;
    let rest = &body[at + FIELD.len()..];
    let rest = trim_start(rest).strip_prefix(b":")?;
    let rest = trim_start(rest).strip_prefix(b"\"")?;
    let end = rest.iter().take(128).position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok().filter(|s| !s.is_empty())
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let n = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[n..]
}

/// One second of a run: requests completed in it, errors among them, and their latency.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Second {
    /// Seconds since the start at the end of this one (1, 2, ...).
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;

/// Latency over time as an SVG: the p50 and p99 of each second as two lines, seconds marked
/// along the x axis and milliseconds up the y axis, `title` above.
pub fn svg(title: &str, seconds: &[Second]) -> String {
    let span = seconds.last().map_or(1, |s| s.second).max(1) as f64;
    let top_ms = nice_ceiling(seconds.iter().map(|s| s.p99_ms.max(s.p50_ms)).fold(0.0, f64::max));
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / span * plot_w;
    let y = |ms: f64| TOP + plot_h - ms / top_ms * plot_h;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="14">{}</text>"#,
        escape(title)
    );
    // Axes, ticks and grid lines.
    let _ = writeln!(
        out,
        r##"<path d="M{LEFT} {TOP} V{} H{}" fill="none" stroke="#333"/>"##,
        TOP + plot_h,
        LEFT + plot_w
    );
    let step_t = tick_step(span);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let px = x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#333"/><text x="{px:.1}" y="{}" text-anchor="middle">{t}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 18.0
        );
        t += step_t;
    }
    let step_ms = tick_step(top_ms);
    let mut ms = 0.0;
    while ms <= top_ms + 1e-9 {
        let py = y(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            trim_number(ms)
        );
        ms += step_ms;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">latency (ms)</text>"#,
        TOP + plot_h / 2.0
    );
    // The two lines, a point at the end of each second that completed requests.
    for (name, colour, pick) in [
        ("p50", "#1f77b4", (|s: &Second| s.p50_ms) as fn(&Second) -> f64),
        ("p99", "#d62728", |s: &Second| s.p99_ms),
    ] {
        let points: Vec<String> = seconds
            .iter()
            .filter(|s| s.requests > 0)
            .map(|s| format!("{:.1},{:.1}", x(s.second as f64), y(pick(s))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
    }
    let legend_x = LEFT + plot_w - 120.0;
    for (i, (name, colour)) in [("p50", "#1f77b4"), ("p99", "#d62728")].iter().enumerate() {
        let ly = TOP + 6.0 + i as f64 * 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{legend_x}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{name} per second</text>"#,
            legend_x + 18.0,
            legend_x + 24.0,
            ly + 4.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// 1, 2 or 5 times a power of ten, at or above `v` (at least 1 ms).
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(1.0) * 1.05;
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

/// A tick step giving about 5 to 10 ticks over `span`.
fn tick_step(span: f64) -> f64 {
    let raw = span / 6.0;
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= raw)
        .unwrap_or(10.0 * p)
}

fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://product:5000/api/products?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("product", 5000, "/api/products?x=1")
        );
        assert_eq!(u.authority(), "product:5000");
        let u = parse_url("http://10.89.0.3").unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.authority().as_str()),
            (80, "/", "10.89.0.3")
        );
        assert_eq!(parse_url("http://web?a=b").unwrap().path, "/?a=b");
        assert_eq!(parse_url("http://web/p#frag").unwrap().path, "/p");
        for (bad, says) in [
            ("web:80/", "no scheme"),
            ("https://web/", "https"),
            ("ftp://web/", "\"ftp\""),
            ("http:///x", "no host"),
            ("http://web:0/", "port"),
            ("http://web:99999/", "port"),
            ("http://web:x/", "port"),
            ("http://[::1]/", "IPv6"),
            ("http://a b/", "characters"),
            ("http://u@web/", "user"),
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn schedule_spreads_exactly_total_requests_over_connections() {
        let s = Schedule::new(200.0, Duration::from_secs(1), 3);
        assert_eq!(s.total, 200);
        assert_eq!((0..3).map(|c| s.count(c)).sum::<u64>(), 200);
        assert_eq!((s.count(0), s.count(1), s.count(2)), (67, 67, 66));
        // Request k goes at k/rate: connection 1's third request is k = 1 + 2*3 = 7.
        assert_eq!(s.at(1, 2), Duration::from_millis(35));
        // Fewer requests than connections: the extra connections send nothing.
        let s = Schedule::new(2.5, Duration::from_secs(1), 4);
        assert_eq!((s.total, s.count(0), s.count(1), s.count(2)), (2, 1, 1, 0));
        assert_eq!(Schedule::new(100.0, Duration::from_millis(1500), 1).total, 150);
    }

    #[test]
    fn served_by_from_header_or_body() {
        assert_eq!(served_by(Some("api-2"), b"{}"), Some("api-2"));
        assert_eq!(
            served_by(None, br#"{"products": [], "served_by": "product-3"}"#),
            Some("product-3")
        );
        assert_eq!(served_by(None, br#"{"served_by":"p-1"}"#), Some("p-1"));
        assert_eq!(served_by(None, br#"{"served_by": 3}"#), None);
        assert_eq!(served_by(None, b"<html>"), None);
        assert_eq!(served_by(Some(" "), br#"{"served_by":"p-1"}"#), Some("p-1"));
    }

    #[test]
    fn svg_draws_both_lines_with_marked_axes() {
        let seconds: Vec<Second> = (1..=12)
            .map(|s| Second {
                second: s,
                requests: 100,
                errors: 0,
                p50_ms: 1.0 + s as f64,
                p99_ms: 100.0 + s as f64,
            })
            .collect();
        let svg = svg("shop <gateway>", &seconds);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("shop &lt;gateway&gt;"));
        let line = |class: &str| {
            let at = svg.find(&format!(r#"class="{class}""#)).unwrap();
            let points = &svg[at..];
            let points = &points[points.find("points=\"").unwrap() + 8..];
            points[..points.find('"').unwrap()].split(' ').count()
        };
        assert_eq!((line("p50"), line("p99")), (12, 12));
        // Time marked every 2 s up to 12; latency up to 200 ms (the p99 peaks at 112).
        assert!(svg.contains(">12</text>") && svg.contains(">6</text>"));
        assert!(svg.contains(">200</text>"), "{svg}");
        assert_eq!(nice_ceiling(0.3), 2.0);
        assert_eq!(nice_ceiling(112.0), 200.0);
    }
}
