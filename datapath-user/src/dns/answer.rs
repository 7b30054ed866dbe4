//! One query in, one verdict out: an answer from the table, an error
//! answer, "forward it", or a drop. The wire format is `hickory-proto`'s;
//! nothing here parses bytes by hand.

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::table::{ptr_address, Forward, Table};

/// TTL of the local answers (Docker's).
pub const TTL: u32 = 600;

/// What becomes of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>, Kind),
    /// Pass the query as it is to the asker's upstreams.
    Forward,
    /// Nothing is sent back (counted).
    Drop(Kind),
}

/// What the counters count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A, AAAA or PTR from the table.
    Local,
    /// A local name, a type it has no records of (AAAA of an IPv4-only
    /// name, MX, ...).
    NoData,
    /// Not answered here and not forwarded (`--internal`, zone transfers).
    Refused,
    /// Unparseable, no question or several.
    FormErr,
    /// Not a standard query (NOTIFY, UPDATE, ...).
    NotImp,
    /// Too short to carry a header, or a response sent as a query.
    Dropped,
}

/// Decides what to do with `query`, asked by endpoint `asker`.
pub fn answer(table: &Table, asker: &str, query: &[u8]) -> Outcome {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            // A header we can read gets FORMERR (RFC 1035); less is dropped.
            return match Header::read(&mut BinDecoder::new(query)) {
                Ok(h) if h.message_type() == MessageType::Query => {
                    error(h.id(), h.op_code(), h.recursion_desired(), None, ResponseCode::FormErr, Kind::FormErr)
                }
                _ => Outcome::Drop(Kind::Dropped),
            };
        }
    };
    let (id, rd) = (msg.id(), msg.recursion_desired());
    if msg.message_type() == MessageType::Response {
        // Never answer an answer: no loops between two servers.
        return Outcome::Drop(Kind::Dropped);
    }
    if msg.op_code() != OpCode::Query {
        return error(id, msg.op_code(), rd, None, ResponseCode::NotImp, Kind::NotImp);
    }
    let [q] = msg.queries() else {
        return error(id, OpCode::Query, rd, None, ResponseCode::FormErr, Kind::FormErr);
    };
    let Some(asker_cfg) = table.asker(asker) else {
        // Removed while the query was on its way.
        return error(id, OpCode::Query, rd, Some(q), ResponseCode::Refused, Kind::Refused);
    };
    let qname = q.name().to_ascii();
    if q.query_class() == DNSClass::IN {
        if let Some(addrs) = table.lookup(asker, &qname) {
            let a = || addrs.v4.iter().map(|ip| Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip))));
            let aaaa = || addrs.v6.iter().map(|ip| Record::from_rdata(q.name().clone(), TTL, RData::AAAA(AAAA(*ip))));
            // A name with no IPv6 address (an IPv4-only network) has no
            // AAAA: an empty answer, as Docker's.
            let records: Vec<Record> = match q.query_type() {
                RecordType::A => a().collect(),
                RecordType::AAAA => aaaa().collect(),
                RecordType::ANY => a().chain(aaaa()).collect(),
                RecordType::AXFR | RecordType::IXFR => {
                    return error(id, OpCode::Query, rd, Some(q), ResponseCode::Refused, Kind::Refused)
                }
                _ => Vec::new(),
            };
            let kind = if records.is_empty() { Kind::NoData } else { Kind::Local };
            return reply(id, rd, q, records, kind);
        }
        if matches!(q.query_type(), RecordType::PTR | RecordType::ANY) {
            if let Some(record) = ptr_answer(table, asker, q) {
                return reply(id, rd, q, vec![record], Kind::Local);
            }
        }
    }
    match asker_cfg.forward {
        Forward::Nowhere => error(id, OpCode::Query, rd, Some(q), ResponseCode::Refused, Kind::Refused),
        _ => Outcome::Forward,
    }
}

fn ptr_answer(table: &Table, asker: &str, q: &Query) -> Option<Record> {
    let ip = ptr_address(&q.name().to_ascii())?;
    let target = Name::from_ascii(table.reverse(asker, ip)?).ok()?;
    Some(Record::from_rdata(q.name().clone(), TTL, RData::PTR(PTR(target))))
}

fn response(id: u16, op: OpCode, rd: bool, code: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Response)
        .set_op_code(op)
        .set_recursion_desired(rd)
        .set_recursion_available(true)
        .set_response_code(code);
    m
}

fn reply(id: u16, rd: bool, q: &Query, records: Vec<Record>, kind: Kind) -> Outcome {
    let mut m = response(id, OpCode::Query, rd, ResponseCode::NoError);
    m.set_authoritative(true).add_query(q.clone()).insert_answers(records);
    encode(m, kind)
}

fn error(id: u16, op: OpCode, rd: bool, q: Option<&Query>, code: ResponseCode, kind: Kind) -> Outcome {
    let mut m = response(id, op, rd, code);
    if let Some(q) = q {
        m.add_query(q.clone());
    }
    encode(m, kind)
}

fn encode(m: Message, kind: Kind) -> Outcome {
    match m.to_vec() {
        Ok(bytes) => Outcome::Reply(bytes, kind),
        // Cannot happen for what is built above; never panic on it.
        Err(_) => Outcome::Drop(Kind::Dropped),
    }
}

/// SERVFAIL for a query that could not be forwarded (no upstream
/// answered, too many in flight); `None` when it has no readable header.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut m = response(msg.id(), msg.op_code(), msg.recursion_desired(), ResponseCode::ServFail);
    if let [q] = msg.queries() {
        m.add_query(q.clone());
    }
    m.to_vec().ok()
}

/// Whether `bytes` is an upstream's usable answer to a query with `id`:
/// a response with that id, neither SERVFAIL nor REFUSED (which make the
/// next upstream be tried, as Docker does).
pub fn usable_answer(bytes: &[u8], id: u16) -> bool {
    match Message::from_vec(bytes) {
        Ok(m) => {
            m.message_type() == MessageType::Response
                && m.id() == id
                && !matches!(m.response_code(), ResponseCode::ServFail | ResponseCode::Refused)
        }
        Err(_) => false,
    }
}

/// The id of a query (already known to parse).
pub fn query_id(bytes: &[u8]) -> Option<u16> {
    Header::read(&mut BinDecoder::new(bytes)).ok().map(|h| h.id())
}

/// A standard query (test clients and the corpus).
fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true).add_query(Query::query(Name::from_ascii(name).unwrap_or_default(), t));
    m.to_vec().unwrap_or_default()
}

/// Malformed and hostile queries: every one gets an error answer or a
/// counted drop. Also thrown at a live server by the integration test.
pub fn hostile_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let good = query(0x1234, "front.", RecordType::A);
    let mut c: Vec<(&'static str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![0]),
        ("eleven bytes", good[..11].to_vec()),
        ("header only, no question", {
            let mut h = good[..12].to_vec();
            h[5] = 0;
            h
        }),
        ("truncated question", good[..good.len() - 3].to_vec()),
        ("qdcount 65535", {
            let mut b = good.clone();
            b[4] = 0xff;
            b[5] = 0xff;
            b
        }),
        ("ancount 65535", {
            let mut b = good.clone();
            b[6] = 0xff;
            b[7] = 0xff;
            b
        }),
        ("compression loop", {
            // Question name is a pointer to itself (offset 12).
            let mut b = good[..12].to_vec();
            b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            b
        }),
        ("forward pointer", {
            let mut b = good[..12].to_vec();
            b.extend_from_slice(&[0xc0, 40, 0, 1, 0, 1]);
            b
        }),
        ("label longer than the message", {
            let mut b = good[..12].to_vec();
            b.extend_from_slice(&[63, b'a', b'b']);
            b
        }),
        ("response sent as a query", {
            let mut b = good.clone();
            b[2] |= 0x80;
            b
        }),
        ("opcode NOTIFY", {
            let mut b = good.clone();
            b[2] = (b[2] & 0x87) | (4 << 3);
            b
        }),
        ("opcode UPDATE", {
            let mut b = good.clone();
            b[2] = (b[2] & 0x87) | (5 << 3);
            b
        }),
        ("two questions", {
            let mut m = Message::new();
            m.set_id(7);
            m.add_query(Query::query(Name::from_ascii("front.").unwrap_or_default(), RecordType::A));
            m.add_query(Query::query(Name::from_ascii("proxy.").unwrap_or_default(), RecordType::A));
            m.to_vec().unwrap_or_default()
        }),
        ("garbage", (0..200u32).map(|i| (i * 37 % 251) as u8).collect()),
        ("all ones", vec![0xff; 512]),
        ("trailing garbage", {
            let mut b = good.clone();
            b.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            b
        }),
    ];
    c.push(("axfr of a local name", query(9, "front.", RecordType::AXFR)));
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use super::query;
    use super::*;
    use crate::dns::table::tests::state;

    fn parsed(o: &Outcome) -> Message {
        match o {
            Outcome::Reply(b, _) => Message::from_vec(b).unwrap(),
            other => panic!("not a reply: {other:?}"),
        }
    }

    fn addrs(m: &Message) -> Vec<String> {
        m.answers().iter().map(|r| r.data().to_string()).collect()
    }

    #[test]
    fn local_names_and_reverse() {
        let t = crate::dns::table::Table::new(&state());
        let a = answer(&t, "front", &query(1, "Proxy.", RecordType::A));
        let m = parsed(&a);
        assert_eq!(m.id(), 1);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative() && m.recursion_available());
        assert_eq!(addrs(&m), ["10.1.0.3"]);
        assert_eq!(m.answers()[0].ttl(), TTL);
        assert_eq!(m.answers()[0].name().to_ascii(), "Proxy.", "the question's name, as asked");
        assert_eq!(addrs(&parsed(&answer(&t, "db", &query(2, "proxy", RecordType::A)))), ["10.2.0.3"]);
        let ptr = parsed(&answer(&t, "front", &query(3, "3.0.1.10.in-addr.arpa.", RecordType::PTR)));
        assert_eq!(addrs(&ptr), ["proxy.a."]);
        // A local name has no AAAA: an empty answer, not a forward.
        let aaaa = answer(&t, "front", &query(4, "proxy.", RecordType::AAAA));
        assert!(matches!(aaaa, Outcome::Reply(_, Kind::NoData)));
        assert!(parsed(&aaaa).answers().is_empty());
        assert_eq!(parsed(&aaaa).response_code(), ResponseCode::NoError);
        let any = parsed(&answer(&t, "front", &query(5, "www.", RecordType::ANY)));
        assert_eq!(addrs(&any), ["10.1.0.3"]);
        for t2 in [RecordType::MX, RecordType::TXT, RecordType::SRV, RecordType::CNAME, RecordType::NS] {
            assert!(matches!(answer(&t, "front", &query(6, "proxy.", t2)), Outcome::Reply(_, Kind::NoData)), "{t2}");
        }
    }

    #[test]
    fn aaaa_and_ip6_arpa_on_dual_stack_networks() {
        let t = crate::dns::table::Table::new(&state());
        let aaaa = answer(&t, "client6", &query(1, "web6.", RecordType::AAAA));
        assert!(matches!(aaaa, Outcome::Reply(_, Kind::Local)), "{aaaa:?}");
        let m = parsed(&aaaa);
        assert_eq!((m.id(), m.response_code()), (1, ResponseCode::NoError));
        assert_eq!(addrs(&m), ["fd00:4::2"]);
        assert_eq!(m.answers()[0].record_type(), RecordType::AAAA);
        assert_eq!(m.answers()[0].ttl(), TTL);
        // A is unchanged; ANY carries both families.
        assert_eq!(addrs(&parsed(&answer(&t, "client6", &query(2, "www6", RecordType::A)))), ["10.4.0.2"]);
        assert_eq!(
            addrs(&parsed(&answer(&t, "client6", &query(3, "web6", RecordType::ANY)))),
            ["10.4.0.2", "fd00:4::2"]
        );
        // An attachment's address, by its alias on that network.
        assert_eq!(addrs(&parsed(&answer(&t, "web6", &query(4, "c6.", RecordType::AAAA)))), ["fd00:4::3"]);
        // A name with no IPv6 address: NOERROR, no answers (Docker's).
        for (asker, name) in [("web6", "old4."), ("front", "client6.")] {
            let o = answer(&t, asker, &query(5, name, RecordType::AAAA));
            assert!(matches!(o, Outcome::Reply(_, Kind::NoData)), "{name}: {o:?}");
            let m = parsed(&o);
            assert_eq!((m.response_code(), m.answers().len()), (ResponseCode::NoError, 0), "{name}");
        }
        let ptr = "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(addrs(&parsed(&answer(&t, "web6", &query(6, ptr, RecordType::PTR)))), ["client6.d."]);
        // Not an address of the asker's networks: forwarded like any name.
        assert_eq!(answer(&t, "front", &query(7, ptr, RecordType::PTR)), Outcome::Forward);
    }

    #[test]
    fn everything_else_is_forwarded_or_refused_on_internal_networks() {
        let t = crate::dns::table::Table::new(&state());
        assert_eq!(answer(&t, "front", &query(1, "example.com.", RecordType::A)), Outcome::Forward);
        assert_eq!(answer(&t, "front", &query(1, "db.", RecordType::A)), Outcome::Forward, "not on a shared net");
        assert_eq!(answer(&t, "front", &query(1, "4.0.2.10.in-addr.arpa.", RecordType::PTR)), Outcome::Forward);
        let refused = answer(&t, "vault", &query(9, "example.com.", RecordType::A));
        assert!(matches!(refused, Outcome::Reply(_, Kind::Refused)));
        let m = parsed(&refused);
        assert_eq!((m.id(), m.response_code(), m.queries().len()), (9, ResponseCode::Refused, 1));
        assert_eq!(addrs(&parsed(&answer(&t, "vault", &query(1, "secrets", RecordType::A)))), ["10.3.0.2"]);
        // An asker that is gone (removed meanwhile).
        assert!(matches!(answer(&t, "gone", &query(1, "front.", RecordType::A)), Outcome::Reply(_, Kind::Refused)));
    }

    #[test]
    fn hostile_corpus_gets_errors_or_drops() {
        let t = crate::dns::table::Table::new(&state());
        for (what, bytes) in hostile_corpus() {
            let o = answer(&t, "front", &bytes);
            let expected = match what {
                "empty" | "one byte" | "eleven bytes" | "response sent as a query" | "all ones" => {
                    Outcome::Drop(Kind::Dropped)
                }
                _ => o.clone(),
            };
            assert_eq!(o, expected, "{what}");
            match &o {
                Outcome::Reply(b, kind) => {
                    let m = Message::from_vec(b).unwrap();
                    assert_eq!(m.message_type(), MessageType::Response, "{what}");
                    let code = m.response_code();
                    match what {
                        "opcode NOTIFY" | "opcode UPDATE" => assert_eq!(*kind, Kind::NotImp, "{what}"),
                        "axfr of a local name" => assert_eq!(code, ResponseCode::Refused, "{what}"),
                        "trailing garbage" => assert!(matches!(kind, Kind::Local | Kind::FormErr), "{what}"),
                        _ => assert_eq!((code, *kind), (ResponseCode::FormErr, Kind::FormErr), "{what}"),
                    }
                }
                Outcome::Drop(k) => assert_eq!(*k, Kind::Dropped, "{what}"),
                Outcome::Forward => panic!("{what} was forwarded"),
            }
        }
    }

    #[test]
    fn every_query_type_gets_an_answer_or_a_forward() {
        let t = crate::dns::table::Table::new(&state());
        for code in 0..=u16::MAX {
            let rt = RecordType::from(code);
            for (asker, name) in [("front", "proxy."), ("vault", "nowhere.example."), ("front", "x.example.")] {
                let mut m = Message::new();
                m.set_id(code).add_query(Query::query(Name::from_ascii(name).unwrap(), rt));
                let Ok(bytes) = m.to_vec() else { continue };
                match answer(&t, asker, &bytes) {
                    Outcome::Reply(b, _) => assert_eq!(Message::from_vec(&b).unwrap().id(), code),
                    Outcome::Forward => assert_eq!(asker, "front"),
                    Outcome::Drop(_) => panic!("type {code} for {name} dropped"),
                }
            }
        }
    }

    #[test]
    fn upstream_answers_are_checked() {
        let q = query(77, "example.com.", RecordType::A);
        assert!(!usable_answer(&q, 77), "a query is no answer");
        let mut ok = Message::from_vec(&q).unwrap();
        ok.set_message_type(MessageType::Response);
        assert!(usable_answer(&ok.to_vec().unwrap(), 77));
        assert!(!usable_answer(&ok.to_vec().unwrap(), 78), "another id");
        ok.set_response_code(ResponseCode::ServFail);
        assert!(!usable_answer(&ok.to_vec().unwrap(), 77));
        let sf = Message::from_vec(&servfail(&q).unwrap()).unwrap();
        assert_eq!((sf.id(), sf.response_code()), (77, ResponseCode::ServFail));
        assert_eq!(query_id(&q), Some(77));
        assert_eq!(servfail(&[1, 2]), None);
    }
}
