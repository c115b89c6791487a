//! Who may use `plumb ui`, decided from a request's parts alone (pure, unit-tested): the Host
//! header must name the address the UI listens on (a page of another site that a DNS
//! rebinding points at this address still names its own host), and every request must carry
//! the token printed at start, as `?token=` (the first load), the cookie the first load sets
//! (`plumb_ui_PORT`: browsers share cookies between the ports of a host, and two UIs may run),
//! or `Authorization: Bearer`. Tokens are compared in constant time.

use std::net::SocketAddr;

use subtle::ConstantTimeEq;

/// How a request proved it may use the UI, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// With the cookie or the header.
    Allowed,
    /// With `?token=` in the URL: the answer sets the cookie and sends the browser on to the
    /// same page without the token in its address bar.
    AllowedByQuery,
    /// 421: a Host header that is not the listen address.
    WrongHost,
    /// 401: no token, or another one.
    NoToken,
}

pub struct Access {
    pub listen: SocketAddr,
    pub token: String,
}

impl Access {
    /// The cookie that carries the token after the first load.
    pub fn cookie(&self) -> String {
        format!("plumb_ui_{}", self.listen.port())
    }

    /// `host`: the Host header; `query`: the URL's query; `cookie`, `authorization`: those headers.
    pub fn check(
        &self,
        host: Option<&str>,
        query: Option<&str>,
        cookie: Option<&str>,
        authorization: Option<&str>,
    ) -> Verdict {
        if !self.host_allowed(host) {
            return Verdict::WrongHost;
        }
        let from_cookie = cookie.and_then(|c| {
            c.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == self.cookie())
                .map(|(_, v)| v)
        });
        let from_header = authorization.and_then(|a| a.strip_prefix("Bearer "));
        if from_cookie.into_iter().chain(from_header).any(|t| self.matches(t)) {
            return Verdict::Allowed;
        }
        if query_param(query.unwrap_or(""), "token").is_some_and(|t| self.matches(&t)) {
            return Verdict::AllowedByQuery;
        }
        Verdict::NoToken
    }

    fn matches(&self, given: &str) -> bool {
        given.len() == self.token.len() && bool::from(given.as_bytes().ct_eq(self.token.as_bytes()))
    }

    /// The listen address as written in a URL, or `localhost:PORT` for a loopback one; any
    /// host when listening on every address (0.0.0.0), where the token alone decides.
    fn host_allowed(&self, host: Option<&str>) -> bool {
        if self.listen.ip().is_unspecified() {
            return true;
        }
        let Some(host) = host else {
            return false;
        };
        let host = host.trim().to_ascii_lowercase();
        host == self.listen.to_string()
            || (self.listen.ip().is_loopback() && host == format!("localhost:{}", self.listen.port()))
    }
}

/// A new token: 128 random bits in hex.
pub fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One parameter of a URL query, percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// The query without its `token` parameter (where the first load sends the browser on to).
pub fn without_token(query: &str) -> String {
    query
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("token"))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 2;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str) -> Access {
        Access {
            listen: listen.parse().unwrap(),
            token: "0123456789abcdef0123456789abcdef".into(),
        }
    }
    const T: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_token_is_needed_in_a_cookie_a_header_or_the_query() {
        let a = access("127.0.0.1:9464");
        let host = Some("127.0.0.1:9464");
        assert_eq!(a.check(host, None, None, None), Verdict::NoToken);
        // Another UI's cookie (another port of the same host) is not this one's.
        assert_eq!(
            a.check(host, None, Some(&format!("plumb_ui_9465={T}")), None),
            Verdict::NoToken
        );
        assert_eq!(a.check(host, Some("token=nope"), None, None), Verdict::NoToken);
        assert_eq!(
            a.check(
                host,
                None,
                Some(&format!("x=1; plumb_ui_9465={T}; plumb_ui_9464={T}")),
                None
            ),
            Verdict::Allowed
        );
        assert_eq!(
            a.check(host, None, None, Some(&format!("Bearer {T}"))),
            Verdict::Allowed
        );
        assert_eq!(
            a.check(host, Some(&format!("seconds=2&token={T}")), None, None),
            Verdict::AllowedByQuery
        );
        // A prefix of the token, or the token with more, is not the token.
        assert_eq!(
            a.check(host, None, None, Some(&format!("Bearer {}", &T[..31]))),
            Verdict::NoToken
        );
        assert_eq!(
            a.check(host, None, None, Some(&format!("Bearer {T}0"))),
            Verdict::NoToken
        );
    }

    #[test]
    fn another_host_is_refused_even_with_the_token() {
        let a = access("127.0.0.1:9464");
        let cookie = format!("plumb_ui_9464={T}");
        for host in ["evil.example:9464", "127.0.0.1:80", "127.0.0.1"] {
            assert_eq!(
                a.check(Some(host), None, Some(&cookie), None),
                Verdict::WrongHost,
                "{host}"
            );
        }
        assert_eq!(a.check(None, None, Some(&cookie), None), Verdict::WrongHost);
        assert_eq!(
            a.check(Some("localhost:9464"), None, Some(&cookie), None),
            Verdict::Allowed
        );
        // localhost only stands for a loopback listen address.
        let b = access("10.0.0.1:9464");
        assert_eq!(
            b.check(Some("localhost:9464"), None, Some(&cookie), None),
            Verdict::WrongHost
        );
        assert_eq!(
            b.check(Some("10.0.0.1:9464"), None, Some(&cookie), None),
            Verdict::Allowed
        );
        let any = access("0.0.0.0:9464");
        assert_eq!(
            any.check(Some("box.lan:9464"), None, Some(&cookie), None),
            Verdict::Allowed
        );
    }

    #[test]
    fn queries_decode_and_lose_their_token() {
        assert_eq!(
            query_param("from=web-1&to=api%3A5000", "to").as_deref(),
            Some("api:5000")
        );
        assert_eq!(query_param("a=b+c", "a").as_deref(), Some("b c"));
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(without_token("token=x&seconds=2"), "seconds=2");
        assert_eq!(without_token("token=x"), "");
        assert_eq!(new_token().len(), 32);
        assert_ne!(new_token(), new_token());
    }
}
