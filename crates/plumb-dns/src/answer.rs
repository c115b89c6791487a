//! One question, one answer: parses a query with hickory-proto, asks the zone, and writes the
//! response; or says the query is for the upstream resolvers. No I/O.

use std::net::Ipv4Addr;
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use plumb_core::zone::{self, Answer, QueryType, Zone};

/// The TTL of the stack's own answers: 0, so a change (a replica unhealthy) reaches every
/// asker at once (glibc does not cache; caching stub resolvers do not keep it either).
pub const LOCAL_TTL: u32 = 0;

/// The largest UDP response for an asker without EDNS (RFC 1035).
const CLASSIC_UDP: usize = 512;
/// What we offer over EDNS: the DNS flag day 2020 size, which is not fragmented.
const EDNS_UDP: u16 = 1232;

/// What to do with a query.
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// A name that is not the stack's, which the asker may resolve upstream.
    Forward(Message),
    /// Not even a header: nothing to answer.
    Drop,
}

/// Over which transport the response goes (UDP answers are cut to the asker's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Answers `bytes`, a query from `asker`, from `zone`.
pub fn handle(zone: &Zone, asker: Ipv4Addr, bytes: &[u8], transport: Transport) -> Outcome {
    let request = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) if bytes.len() >= 12 => {
            let id = u16::from_be_bytes([bytes[0], bytes[1]]);
            return reply(
                &Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
                None,
                transport,
            );
        }
        Err(_) => return Outcome::Drop,
    };
    let meta = &request.metadata;
    if meta.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    if meta.op_code != OpCode::Query {
        return reply(&error(&request, ResponseCode::NotImp), Some(&request), transport);
    }
    let [query] = &request.queries[..] else {
        return reply(&error(&request, ResponseCode::FormErr), Some(&request), transport);
    };
    let qtype = match query.query_type {
        RecordType::A => QueryType::A,
        RecordType::PTR => QueryType::Ptr,
        RecordType::SRV => QueryType::Srv,
        _ => QueryType::Other,
    };
    let name = query.name.to_ascii();
    let mut response = error(&request, ResponseCode::NoError);
    match zone.answer(asker, &name, qtype) {
        Answer::Records(records) => {
            response.metadata.authoritative = true;
            for r in records {
                if let Some(data) = rdata(&r) {
                    response.add_answer(Record::from_rdata(query.name.clone(), LOCAL_TTL, data));
                }
            }
        }
        Answer::NxDomain => {
            response.metadata.authoritative = true;
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        Answer::Elsewhere if zone.may_forward(asker) => return Outcome::Forward(request),
        // An asker on internal networks only: no name outside the stack exists for it.
        Answer::Elsewhere => response.metadata.response_code = ResponseCode::NXDomain,
    }
    reply(&response, Some(&request), transport)
}

/// A response to `request` with `code` and its question, nothing else yet.
pub fn error(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.response_code = code;
    response.add_queries(request.queries.iter().cloned());
    response
}

/// Serialises `response`, with EDNS if the request had it, cut down (TC set) when it does
/// not fit the asker's UDP size.
pub fn reply(response: &Message, request: Option<&Message>, transport: Transport) -> Outcome {
    let mut response = response.clone();
    let asked_edns = request.and_then(|r| r.edns.as_ref());
    if let Some(theirs) = asked_edns {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP.min(theirs.max_payload()));
        response.set_edns(edns);
    }
    let Ok(bytes) = response.to_vec() else {
        return Outcome::Drop;
    };
    let limit = asked_edns.map_or(CLASSIC_UDP, |e| usize::from(e.max_payload().clamp(512, EDNS_UDP)));
    if transport == Transport::Udp && bytes.len() > limit {
        return response.truncate().to_vec().map_or(Outcome::Drop, Outcome::Reply);
    }
    Outcome::Reply(bytes)
}

fn rdata(record: &zone::Record) -> Option<RData> {
    Some(match record {
        zone::Record::A(a) => RData::A(A(*a)),
        zone::Record::Ptr(name) => RData::PTR(PTR(Name::from_str(name).ok()?)),
        zone::Record::Srv { port, target } => RData::SRV(SRV::new(0, 100, *port, Name::from_str(target).ok()?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use plumb_core::desired::resolve;
    use plumb_core::spec::parse;

    fn zone() -> (plumb_core::Desired, Zone) {
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[networks.i]\nsubnet = \"10.0.1.0/24\"\ninternal = true\n\
                    [services.web]\nnetworks = [\"n\"]\nreplicas = 2\nexpose = [80]\n[services.db]\nnetworks = [\"i\"]\n";
        let (d, _) = resolve(&parse("f", text).unwrap(), &Default::default()).unwrap();
        let z = Zone::build(&d, &Default::default());
        (d, z)
    }

    fn ask(z: &Zone, asker: &str, name: &str, qtype: RecordType) -> Outcome {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
        handle(z, asker.parse().unwrap(), &m.to_vec().unwrap(), Transport::Udp)
    }

    fn parsed(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            _ => panic!("no reply"),
        }
    }

    #[test]
    fn a_stack_name_is_answered_with_its_records_round_tripped_through_the_wire_format() {
        let (d, z) = zone();
        let vip = d.service("web").unwrap().vip.unwrap();
        let m = parsed(ask(&z, "10.0.0.2", "web.s.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(vip)));
        let m = parsed(ask(&z, "10.0.0.2", "_80._tcp.web.s.", RecordType::SRV));
        assert_eq!(
            m.answers[0].data,
            RData::SRV(SRV::new(0, 100, 80, Name::from_str("web.s.").unwrap()))
        );
        let m = parsed(ask(&z, "10.0.0.2", "3.0.0.10.in-addr.arpa.", RecordType::PTR));
        assert_eq!(m.answers[0].data, RData::PTR(PTR(Name::from_str("web-2.s.").unwrap())));
        let m = parsed(ask(&z, "10.0.0.2", "db.s.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn other_names_are_forwarded_except_for_askers_on_internal_networks() {
        let (_, z) = zone();
        assert!(matches!(
            ask(&z, "10.0.0.2", "example.com.", RecordType::A),
            Outcome::Forward(_)
        ));
        let m = parsed(ask(&z, "10.0.1.2", "example.com.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let (_, z) = zone();
        let junk = [0xab, 0xcd, 1, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0xff];
        let m = parsed(handle(&z, "10.0.0.2".parse().unwrap(), &junk, Transport::Udp));
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );
        assert!(matches!(
            handle(&z, "10.0.0.2".parse().unwrap(), &[1, 2, 3], Transport::Udp),
            Outcome::Drop
        ));
    }
}
