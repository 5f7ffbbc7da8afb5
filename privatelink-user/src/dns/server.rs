//! The hickory `RequestHandler` of one listener: a VPC's resolver (it knows its VPC, for
//! the private zones and the client's zone) or the external listener (no VPC). It checks
//! the request's form and asks the current `DnsView`; hickory does the wire format and
//! drops what cannot be a query before it gets here (shorter than a header, QR set; an
//! undecodable body is answered FORMERR).
//!
//! Truncation is done here, not left to hickory's encoder: hickory-proto 0.26.3 rolls a
//! record that does not fit back without cutting it off the buffer, so its truncated UDP
//! answers carry the partial record's bytes after the message (dig: "Message has N extra
//! bytes at end"), and it drops the OPT record first (fixed upstream on release/0.26,
//! hickory-dns PRs 3936 and 3896, not released yet). An answer that may not fit the UDP
//! limit (512 bytes without EDNS, the OPT's payload with it) is measured by encoding it,
//! and cut to the answers that fit, with TC set and the OPT kept.

use std::sync::Arc;

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
    serialize::binary::BinEncoder,
};
use hickory_server::{
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::sync::watch;
use tracing::debug;

use super::view::DnsView;

/// The largest UDP answer we send to an EDNS client, whatever buffer it advertises: the
/// DNS flag day 2020 value, which avoids IP fragmentation on common paths (larger
/// answers are truncated and retried over TCP).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The EDNS version we speak.
const EDNS_VERSION: u8 = 0;

/// Answers one listener's queries from the shared view.
pub struct Handler {
    /// The VPC (numeric id) whose resolver this is; none: the external listener.
    vpc: Option<u32>,
    view: watch::Receiver<Arc<DnsView>>,
}

impl Handler {
    pub fn new(vpc: Option<u32>, view: watch::Receiver<Arc<DnsView>>) -> Self {
        Self { vpc, view }
    }
}

/// The response's OPT record for a request that carried one: our version, and the
/// client's payload size within 512 and `MAX_UDP_PAYLOAD`.
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|e| {
        let mut o = Edns::new();
        o.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD))
            .set_version(EDNS_VERSION);
        o
    })
}

/// Answers `code` with no records (as hickory's catalog does); the upper bits of an
/// extended code (BADVERS) travel in the OPT record.
async fn error<R: ResponseHandler>(
    request: &Request,
    code: ResponseCode,
    mut edns: Option<Edns>,
    mut out: R,
) -> ResponseInfo {
    if let Some(e) = &mut edns {
        e.set_rcode_high(code.high());
    }
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
        .error_msg(&request.metadata, code);
    match out.send_response(response).await {
        Ok(info) => info,
        Err(e) => not_sent(request, &e),
    }
}

/// What the server records for an answer that could not be sent (the client went away).
fn not_sent(request: &Request, e: &dyn std::fmt::Display) -> ResponseInfo {
    debug!(src = %request.src(), "DNS answer not sent: {e}");
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut out: R,
    ) -> ResponseInfo {
        let edns = response_edns(request);
        if request
            .edns
            .as_ref()
            .is_some_and(|e| e.version() > EDNS_VERSION)
        {
            return error(request, ResponseCode::BADVERS, edns, out).await;
        }
        if request.metadata.op_code != OpCode::Query {
            return error(request, ResponseCode::NotImp, edns, out).await;
        }
        // Exactly one question.
        let Ok(info) = request.request_info() else {
            return error(request, ResponseCode::FormErr, edns, out).await;
        };
        let query = info.query;
        if query.query_class() != DNSClass::IN {
            return error(request, ResponseCode::Refused, edns, out).await;
        }
        // No zone transfers: the zones are generated, and nobody is their secondary.
        if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return error(request, ResponseCode::Refused, edns, out).await;
        }
        let view = self.view.borrow().clone();
        let answer = view.answer(self.vpc, info.src.ip(), query.name(), query.query_type());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.rcode;
        let (answers, authority) = fit(
            request,
            edns.as_ref(),
            &mut metadata,
            &answer.answers,
            &answer.authority,
        );
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answers.iter().copied(),
            authority.iter().copied(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match out.send_response(response).await {
            Ok(info) => info,
            Err(e) => not_sent(request, &e),
        }
    }
}

/// The sections that fit the request's UDP limit: all of them (over TCP, or when they
/// surely fit), or as many answers as fit and no authority, with TC set (RFC 1035 4.2.1,
/// RFC 2181 9: truncation drops whole records from the end).
fn fit<'r, 'a>(
    request: &Request,
    edns: Option<&Edns>,
    metadata: &mut Metadata,
    answers: &'r [&'a Record],
    authority: &'r [&'a Record],
) -> (&'r [&'a Record], &'r [&'a Record]) {
    if request.protocol() != Protocol::Udp {
        return (answers, authority);
    }
    let limit = edns.map_or(512, |e| e.max_payload() as usize);
    // Header, question, OPT (no options), records: an upper bound of the encoded size.
    let bound = 12
        + request.queries.as_bytes().len()
        + 11
        + answers
            .iter()
            .chain(authority)
            .map(|r| wire_bound(r))
            .sum::<usize>();
    if bound <= limit {
        return (answers, authority);
    }
    let meta = *metadata;
    let whole = |n: usize, auth: &[&Record]| fits(request, edns, &meta, &answers[..n], auth, limit);
    if whole(answers.len(), authority) {
        return (answers, authority);
    }
    // The most answers that fit without the authority (none may; the header, question
    // and OPT always do): `fit` does, `over` does not.
    let (mut fit, mut over) = (0, answers.len() + 1);
    while over - fit > 1 {
        let mid = (fit + over) / 2;
        if whole(mid, &[]) {
            fit = mid;
        } else {
            over = mid;
        }
    }
    metadata.truncation = true;
    (&answers[..fit], &[])
}

/// Whether hickory encodes the response with these sections whole within `limit` bytes
/// (measured with its own encoder: near the limit it needs room for a name's labels
/// before it compresses them).
fn fits(
    request: &Request,
    edns: Option<&Edns>,
    metadata: &Metadata,
    answers: &[&Record],
    authority: &[&Record],
    limit: usize,
) -> bool {
    let mut buf = Vec::with_capacity(limit);
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_max_size(u16::try_from(limit).unwrap_or(u16::MAX));
    let response = MessageResponseBuilder::new(&request.queries, edns).build(
        *metadata,
        answers.iter().copied(),
        authority.iter().copied(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match response.destructive_emit(&mut encoder) {
        Ok(h) => {
            !h.truncation
                && usize::from(h.counts().answers) == answers.len()
                && usize::from(h.counts().authorities) == authority.len()
        }
        Err(_) => false,
    }
}

/// The most bytes a record can take on the wire (its names uncompressed).
fn wire_bound(r: &Record) -> usize {
    // A name's wire form: its labels, each with a length byte, and the root's.
    fn name(n: &Name) -> usize {
        n.len() + 2
    }
    let rdata = match &r.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::NS(n) => name(&n.0),
        RData::SOA(soa) => name(&soa.mname) + name(&soa.rname) + 20,
        _ => usize::from(u16::MAX),
    };
    name(&r.name) + 10 + rdata
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, Query},
        rr::rdata::A,
    };

    use super::*;

    fn request(edns: Option<u16>, protocol: Protocol) -> Request {
        let name = Name::from_ascii("ep-big.epsrv-b.r1.pl.example.").expect("name");
        let mut m = Message::query();
        m.add_query(Query::query(name, RecordType::A));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            m.set_edns(e);
        }
        let bytes = m.to_vec().expect("query bytes");
        Request::from_bytes(bytes, "10.0.0.1:5000".parse().expect("address"), protocol)
            .expect("request")
    }

    /// 35 A records under the question's name: 634 bytes encoded.
    fn records() -> Vec<Record> {
        let name = Name::from_ascii("ep-big.epsrv-b.r1.pl.example.").expect("name");
        (0..35u8)
            .map(|i| Record::from_rdata(name.clone(), 5, RData::A(A::new(10, 10, 100 + i, 10))))
            .collect()
    }

    /// The encoded answer: its length, and the answers its header counts.
    fn encode(
        req: &Request,
        edns: Option<&Edns>,
        meta: Metadata,
        answers: &[&Record],
    ) -> (usize, u16) {
        let mut buf = Vec::new();
        let mut encoder = BinEncoder::new(&mut buf);
        let h = MessageResponseBuilder::new(&req.queries, edns)
            .build(
                meta,
                answers.iter().copied(),
                [].iter(),
                [].iter(),
                [].iter(),
            )
            .destructive_emit(&mut encoder)
            .expect("encodes");
        (buf.len(), h.counts().answers)
    }

    #[test]
    fn udp_answers_are_cut_to_whole_records_that_fit() {
        let recs = records();
        let all: Vec<&Record> = recs.iter().collect();
        // Without EDNS: 512 bytes at most, TC set, as many records as hickory fits whole.
        let req = request(None, Protocol::Udp);
        let mut meta = Metadata::response_from_request(&req.metadata);
        let (answers, authority) = fit(&req, None, &mut meta, &all, &[]);
        assert!(meta.truncation && authority.is_empty());
        assert!(
            answers.len() >= 20 && answers.len() < 35,
            "{}",
            answers.len()
        );
        let (len, count) = encode(&req, None, meta, answers);
        assert!(len <= 512, "{len}");
        assert_eq!(
            usize::from(count),
            answers.len(),
            "every record written is counted"
        );
        // One more would not have fitted whole.
        assert!(!fits(
            &req,
            None,
            &meta,
            &all[..answers.len() + 1],
            &[],
            512
        ));
        // EDNS with 1232 bytes: all of them, no TC; with 512: cut, the OPT kept.
        for (payload, whole) in [(1232, true), (512, false)] {
            let req = request(Some(payload), Protocol::Udp);
            let edns = response_edns(&req);
            let mut meta = Metadata::response_from_request(&req.metadata);
            let (answers, _) = fit(&req, edns.as_ref(), &mut meta, &all, &[]);
            assert_eq!(
                (answers.len() == 35, !meta.truncation),
                (whole, whole),
                "{payload}"
            );
            let mut buf = Vec::new();
            let mut encoder = BinEncoder::new(&mut buf);
            let h = MessageResponseBuilder::new(&req.queries, edns.as_ref())
                .build(
                    meta,
                    answers.iter().copied(),
                    [].iter(),
                    [].iter(),
                    [].iter(),
                )
                .destructive_emit(&mut encoder)
                .expect("encodes");
            assert!(
                buf.len() <= usize::from(payload),
                "{payload}: {}",
                buf.len()
            );
            assert_eq!(h.counts().additionals, 1, "{payload}: the OPT record");
        }
        // TCP: everything.
        let req = request(None, Protocol::Tcp);
        let mut meta = Metadata::response_from_request(&req.metadata);
        assert_eq!(fit(&req, None, &mut meta, &all, &[]).0.len(), 35);
        assert!(!meta.truncation);
    }
}
