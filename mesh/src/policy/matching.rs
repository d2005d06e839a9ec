//! One AuthorizationPolicy rule against one connection, at L4.
//!
//! The agent sees a connection, not requests: no method, path, host, header or JWT. Istio's
//! ambient documentation says ztunnel fails safe on such attributes, and Weft does the same
//! with a three-valued match. A clause that needs L7 is [`Match::Unknown`]; an ALLOW rule
//! counts only a definite [`Match::Yes`], while a DENY (or AUDIT) rule counts `Unknown` too.
//! So an unknowable attribute can only ever deny more, never allow more. `Unknown` is
//! combined with the usual three-valued AND/OR, which keeps the L4 clauses of a rule
//! decisive: `DENY from principals [x] to paths [/admin]` denies `x` at L4, and nobody else.
//!
//! Value matching follows the "Authorization Policy" reference: exact, prefix `abc*`, suffix
//! `*abc`, and `*` for any non-empty value. A `not` field matches when the value matches
//! none of its entries, and an absent value (a plaintext peer has no principal and no
//! namespace) matches none: `notPrincipals: ["*"]` is how Istio's reference denies plaintext
//! peers, and that only works this way. A positive field never matches an absent value.
//!
//! At a waypoint the same matcher gets the request too ([`Request`]), and the L7 clauses
//! become definite: `hosts` (case-insensitive, as Istio matches them), `methods`, `paths`
//! (without the query string) and `request.headers[...]` conditions. What neither side can
//! see (`requestPrincipals` and the `request.auth.*` keys, which need JWT authentication)
//! stays `Unknown`, and so fails closed at the waypoint as well.

use std::net::IpAddr;

use crate::config::{Cidr, Condition, Operation, Rule, Source, condition_keys};

use super::{Peer, Workload};

/// A three-valued match. The order (`No < Unknown < Yes`) makes AND the minimum and OR the
/// maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Match {
    No,
    /// Depends on attributes only an L7 proxy can see.
    Unknown,
    Yes,
}

impl From<bool> for Match {
    fn from(b: bool) -> Self {
        if b { Match::Yes } else { Match::No }
    }
}

fn all(matches: impl IntoIterator<Item = Match>) -> Match {
    matches.into_iter().min().unwrap_or(Match::Yes)
}

fn any(matches: impl IntoIterator<Item = Match>) -> Match {
    matches.into_iter().max().unwrap_or(Match::No)
}

/// Istio's value matching: exact, `prefix*`, `*suffix`, and `*` for any non-empty value.
/// Case-sensitive.
pub fn value_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

/// What an L7 proxy knows of a request, beyond its connection.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request path, with or without a query string (it is not part of the match).
    pub path: &'a str,
    /// `:authority` (or `Host`).
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
}

impl Request<'_> {
    fn path(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(self.path, |(path, _)| path)
    }

    /// A header's value, for `request.headers[name]`; several values are joined with `,`
    /// as HTTP allows. A value that is not text counts as absent.
    fn header(&self, name: &str) -> Option<String> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?.to_str().ok()?.to_string();
        values.try_fold(first, |mut all, v| {
            all.push(',');
            all.push_str(v.to_str().ok()?);
            Some(all)
        })
    }
}

/// What the agent knows of a connection, and what a waypoint knows of a request on it.
pub(super) struct L4<'a> {
    pub src: &'a Peer,
    pub dest: &'a Workload<'a>,
    pub dest_port: u16,
    /// `None` at the agent: the L7 clauses are then `Unknown`.
    pub request: Option<&'a Request<'a>>,
}

impl L4<'_> {
    /// The peer's principal without `spiffe://`, as Istio writes principals in policies.
    fn principal(&self) -> Option<&str> {
        let principal = self.src.principal.as_deref()?;
        Some(principal.strip_prefix("spiffe://").unwrap_or(principal)).filter(|p| !p.is_empty())
    }

    fn namespace(&self) -> Option<&str> {
        self.src.namespace.as_deref().filter(|n| !n.is_empty())
    }

    /// The `rules[]` entry as a whole: every clause present must match.
    pub fn rule(&self, rule: &Rule) -> Match {
        let from = if rule.from.is_empty() {
            Match::Yes
        } else {
            any(rule.from.iter().map(|s| self.source(s)))
        };
        let to = if rule.to.is_empty() {
            Match::Yes
        } else {
            any(rule.to.iter().map(|o| self.operation(o)))
        };
        let when = all(rule.when.iter().map(|c| self.condition(c)));
        all([from, to, when])
    }

    fn source(&self, s: &Source) -> Match {
        let peer_ip = self.src.ip;
        all([
            strings(&s.principals, &s.not_principals, self.principal()),
            strings(&s.namespaces, &s.not_namespaces, self.namespace()),
            cidrs(&s.ip_blocks, &s.not_ip_blocks, peer_ip),
            // With no proxy in front to report the original client (PROXY protocol or
            // X-Forwarded-For are L7 or absent here), the remote address is the peer's.
            cidrs(&s.remote_ip_blocks, &s.not_remote_ip_blocks, peer_ip),
            needs_l7(&s.l7_fields()),
        ])
    }

    fn operation(&self, o: &Operation) -> Match {
        let port = self.dest_port;
        let ports = all([
            Match::from(o.ports.is_empty() || o.ports.contains(&port)),
            Match::from(!o.not_ports.contains(&port)),
            needs_l7(&[&o.unsupported]),
        ]);
        let Some(request) = self.request else {
            return all([ports, needs_l7(&o.l7_fields())]);
        };
        let host = request.host.to_ascii_lowercase();
        let path = request.path();
        all([
            ports,
            list_match(&o.hosts, &o.not_hosts, |p| {
                value_matches(&p.to_ascii_lowercase(), &host)
            }),
            list_match(&o.methods, &o.not_methods, |p| {
                value_matches(p, request.method)
            }),
            list_match(&o.paths, &o.not_paths, |p| value_matches(p, path)),
        ])
    }

    /// One `when` entry. Keys the agent cannot see are `Unknown`: the L7 ones (a waypoint
    /// sees `request.headers[...]`), any key
    /// outside Istio's table, `connection.sni` (the agent's connections are HBONE tunnels
    /// or plaintext; there is no inner TLS handshake to read it from), and
    /// `destination.ip` when the caller did not give the address.
    fn condition(&self, c: &Condition) -> Match {
        use condition_keys as k;
        let ip_list = |ip: IpAddr| {
            list_match(&c.values, &c.not_values, |v| {
                v.parse::<Cidr>().is_ok_and(|cidr| cidr.contains(ip))
            })
        };
        match c.key.as_str() {
            k::SOURCE_IP | k::REMOTE_IP => ip_list(self.src.ip),
            k::DESTINATION_IP => self.dest.ip.map_or(Match::Unknown, ip_list),
            k::DESTINATION_PORT => list_match(&c.values, &c.not_values, |v| {
                v.parse::<u16>().is_ok_and(|p| p == self.dest_port)
            }),
            k::SOURCE_PRINCIPAL => strings(&c.values, &c.not_values, self.principal()),
            k::SOURCE_NAMESPACE => strings(&c.values, &c.not_values, self.namespace()),
            key => match (self.request, condition_keys::request_header(key)) {
                (Some(request), Some(name)) => {
                    strings(&c.values, &c.not_values, request.header(name).as_deref())
                }
                _ => Match::Unknown,
            },
        }
    }
}

/// `values` (when non-empty) must contain a match and `not_values` must contain none.
fn list_match(values: &[String], not_values: &[String], matches: impl Fn(&str) -> bool) -> Match {
    let positive = values.is_empty() || values.iter().any(|v| matches(v));
    let negative = !not_values.iter().any(|v| matches(v));
    Match::from(positive && negative)
}

/// A field pair of string patterns against a value the peer may not have.
fn strings(values: &[String], not_values: &[String], actual: Option<&str>) -> Match {
    match actual {
        Some(actual) => list_match(values, not_values, |p| value_matches(p, actual)),
        // Nothing matches an absent value: the positive list fails, the negative one holds.
        None => Match::from(values.is_empty()),
    }
}

fn cidrs(blocks: &[Cidr], not_blocks: &[Cidr], ip: IpAddr) -> Match {
    let positive = blocks.is_empty() || blocks.iter().any(|b| b.contains(ip));
    let negative = !not_blocks.iter().any(|b| b.contains(ip));
    Match::from(positive && negative)
}

/// `Unknown` when any of the L7-only fields is set, `Yes` (no constraint) otherwise.
fn needs_l7(fields: &[&Vec<String>]) -> Match {
    if fields.iter().all(|f| f.is_empty()) {
        Match::Yes
    } else {
        Match::Unknown
    }
}

#[cfg(test)]
#[path = "matching_tests.rs"]
mod tests;
