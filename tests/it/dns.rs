//! A real authoritative DNS server for the discovery tests: `hickory-server`
//! on 127.0.0.1 (UDP and TCP, one ephemeral port), answering from a zone the
//! test changes while it runs.
//!
//! It answers SRV records (with the targets' A records as glue in the
//! additional section when asked to), A and AAAA records, each answer's
//! records in a new random order, with the TTL the test sets; or, switched
//! at run time, SERVFAIL, NXDOMAIN, an empty NOERROR, or nothing at all (the
//! client times out). It counts the queries it receives per name and type.
//! The server's tasks end when the [`DnsServer`] is dropped.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

/// How the server answers every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// From the zone: records, an empty NOERROR for a known name without
    /// records of the type asked for, NXDOMAIN for an unknown name.
    Zone,
    /// `SERVFAIL`.
    ServFail,
    /// `NXDOMAIN` for every name.
    NxDomain,
    /// `NOERROR` without records for every name.
    Empty,
    /// No answer at all: the client's query times out.
    Silent,
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Its target host (without the final dot).
    pub target: String,
    /// Its port.
    pub port: u16,
    /// Its weight.
    pub weight: u16,
    /// Its priority (lower first).
    pub priority: u16,
}

impl Srv {
    /// A record of priority 0 and weight 1.
    pub fn new(target: &str, port: u16) -> Srv {
        Srv {
            target: target.to_owned(),
            port,
            weight: 1,
            priority: 0,
        }
    }
}

/// What the server knows and has seen.
#[derive(Debug)]
struct Zone {
    answer: Answer,
    ttl: u32,
    glue: bool,
    /// SRV records by owner name (lowercase, no final dot).
    srv: HashMap<String, Vec<Srv>>,
    /// A and AAAA records by host name (lowercase, no final dot).
    hosts: HashMap<String, Vec<IpAddr>>,
    /// Queries received, by (name, type).
    queries: HashMap<(String, RecordType), u64>,
    /// The orders in which answers listed their records, by (name, type).
    orders: HashMap<(String, RecordType), HashSet<Vec<String>>>,
}

/// The zone every answer's negative part (NXDOMAIN, empty NOERROR) names
/// in its SOA, as a real authoritative server does.
const ORIGIN: &str = "test.";

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    /// Where it listens, UDP and TCP.
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    _server: Server<Handler>,
}

impl DnsServer {
    /// Starts a server on 127.0.0.1 with an empty zone, answering from it
    /// with a TTL of 1 s and no glue.
    pub async fn start() -> DnsServer {
        let zone = Arc::new(Mutex::new(Zone {
            answer: Answer::Zone,
            ttl: 1,
            glue: false,
            srv: HashMap::new(),
            hosts: HashMap::new(),
            queries: HashMap::new(),
            orders: HashMap::new(),
        }));
        let mut server = Server::new(Handler { zone: zone.clone() });
        // One port for both transports: a UDP port the OS picks, then TCP
        // on it (taken by something else now and then: pick again).
        let mut tries = 0;
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = udp.local_addr().unwrap().port();
            match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                Ok(tcp) => break (udp, tcp),
                Err(error) => {
                    tries += 1;
                    assert!(tries < 20, "no port free for both UDP and TCP: {error}");
                }
            }
        };
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        DnsServer {
            addr,
            zone,
            _server: server,
        }
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().unwrap()
    }

    /// Answers every query so from now on.
    pub fn set_answer(&self, answer: Answer) {
        self.zone().answer = answer;
    }

    /// The TTL of every record from now on.
    pub fn set_ttl(&self, seconds: u32) {
        self.zone().ttl = seconds;
    }

    /// Whether SRV answers carry their targets' A/AAAA records in the
    /// additional section.
    pub fn set_glue(&self, glue: bool) {
        self.zone().glue = glue;
    }

    /// Replaces the SRV records of `name`.
    pub fn set_srv(&self, name: &str, records: Vec<Srv>) {
        self.zone().srv.insert(key(name), records);
    }

    /// Replaces the A/AAAA records of `host`.
    pub fn set_host(&self, host: &str, addresses: Vec<IpAddr>) {
        self.zone().hosts.insert(key(host), addresses);
    }

    /// How many different orders of its records the answers about `name`
    /// and `kind` have listed so far.
    pub fn orders(&self, name: &str, kind: RecordType) -> usize {
        self.zone()
            .orders
            .get(&(key(name), kind))
            .map_or(0, HashSet::len)
    }

    /// Queries of `name` for `kind` received so far.
    pub fn queries(&self, name: &str, kind: RecordType) -> u64 {
        self.zone()
            .queries
            .get(&(key(name), kind))
            .copied()
            .unwrap_or(0)
    }
}

/// A name as the zone keys it: lowercase, without the final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn name(text: &str) -> Name {
    Name::from_ascii(format!("{}.", key(text))).unwrap()
}

/// What to send for one query, built while the zone is locked.
enum Reply {
    Nothing,
    Error(ResponseCode),
    Records {
        code: ResponseCode,
        answers: Vec<Record>,
        additionals: Vec<Record>,
        soa: Vec<Record>,
    },
}

struct Handler {
    zone: Arc<Mutex<Zone>>,
}

impl Handler {
    fn reply(&self, request: &Request) -> Reply {
        let Some(query) = request.queries.queries().first() else {
            return Reply::Error(ResponseCode::FormErr);
        };
        let owner = key(&query.name().to_string());
        let kind = query.query_type();
        let mut zone = self.zone.lock().unwrap();
        *zone.queries.entry((owner.clone(), kind)).or_default() += 1;
        let ttl = zone.ttl;
        let soa = || {
            let soa = SOA::new(
                name(&format!("ns.{ORIGIN}")),
                name(&format!("hostmaster.{ORIGIN}")),
                1,
                3600,
                600,
                86400,
                ttl,
            );
            vec![Record::from_rdata(name(ORIGIN), ttl, RData::SOA(soa))]
        };
        let negative = |code| Reply::Records {
            code,
            answers: Vec::new(),
            additionals: Vec::new(),
            soa: soa(),
        };
        match zone.answer {
            Answer::Silent => return Reply::Nothing,
            Answer::ServFail => return Reply::Error(ResponseCode::ServFail),
            Answer::NxDomain => return negative(ResponseCode::NXDomain),
            Answer::Empty => return negative(ResponseCode::NoError),
            Answer::Zone => {}
        }
        let address_records = |host: &str, kind: Option<RecordType>| -> Vec<Record> {
            zone.hosts
                .get(&key(host))
                .into_iter()
                .flatten()
                .filter_map(|ip| {
                    let data = match ip {
                        IpAddr::V4(v4) => RData::A(A(*v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                    };
                    let wanted = kind.is_none_or(|k| data.record_type() == k);
                    wanted.then(|| Record::from_rdata(name(host), ttl, data))
                })
                .collect()
        };
        let (mut answers, mut additionals) = match kind {
            RecordType::SRV => {
                let records = zone.srv.get(&owner).cloned().unwrap_or_default();
                let answers: Vec<Record> = records
                    .iter()
                    .map(|r| {
                        let srv = SRV::new(r.priority, r.weight, r.port, name(&r.target));
                        Record::from_rdata(name(&owner), ttl, RData::SRV(srv))
                    })
                    .collect();
                let additionals = match zone.glue {
                    true => records
                        .iter()
                        .flat_map(|r| address_records(&r.target, None))
                        .collect(),
                    false => Vec::new(),
                };
                (answers, additionals)
            }
            RecordType::A | RecordType::AAAA => (address_records(&owner, Some(kind)), Vec::new()),
            _ => (Vec::new(), Vec::new()),
        };
        let known = zone.srv.contains_key(&owner) || zone.hosts.contains_key(&owner);
        if !known {
            return negative(ResponseCode::NXDomain);
        }
        // A new order every time, as round-robin DNS servers give.
        fastrand::shuffle(&mut answers);
        fastrand::shuffle(&mut additionals);
        let order = answers.iter().map(|r| r.data.to_string()).collect();
        zone.orders.entry((owner, kind)).or_default().insert(order);
        drop(zone);
        let soa = match answers.is_empty() {
            true => soa(),
            false => Vec::new(),
        };
        Reply::Records {
            code: ResponseCode::NoError,
            answers,
            additionals,
            soa,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        let builder = MessageResponseBuilder::from_message_request(request);
        let sent = match self.reply(request) {
            Reply::Nothing => {
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                });
            }
            Reply::Error(code) => {
                let response = builder.error_msg(&request.metadata, code);
                response_handle.send_response(response).await
            }
            Reply::Records {
                code,
                answers,
                additionals,
                soa,
            } => {
                metadata.response_code = code;
                let response = builder.build(metadata, &answers, &[], &soa, &additionals);
                response_handle.send_response(response).await
            }
        };
        sent.unwrap_or_else(|_| {
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}
