//! The few group-coordinator requests the heal (and its tests) send, in the classic
//! non-flexible encodings: FindCoordinator v0, JoinGroup v4, SyncGroup v0, Heartbeat v0.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const REBALANCE_IN_PROGRESS: i16 = 27;

/// A blocking connection to one broker.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    client_id: String,
    correlation: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: i16,
    pub generation: i32,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the member list.
    pub members: Vec<String>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as i16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
    buf.extend_from_slice(b);
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(bad("short response"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> io::Result<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> io::Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> io::Result<String> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(String::new());
        }
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("string not UTF-8"))
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(Vec::new());
        }
        Ok(self.take(n as usize)?.to_vec())
    }
}

/// Consumer protocol metadata (version 0) subscribing to one placeholder topic.
fn consumer_metadata() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0i16.to_be_bytes());
    m.extend_from_slice(&1i32.to_be_bytes());
    put_str(&mut m, "audit-group-heal");
    put_bytes(&mut m, b"");
    m
}

impl Conn {
    pub fn connect(addr: &str, client_id: &str, timeout: Duration) -> io::Result<Self> {
        let sock = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| bad("address resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&sock, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            stream,
            client_id: client_id.to_owned(),
            correlation: 0,
        })
    }

    fn request(&mut self, key: i16, version: i16, body: &[u8]) -> io::Result<Vec<u8>> {
        self.correlation += 1;
        let mut msg = Vec::with_capacity(body.len() + 32);
        msg.extend_from_slice(&key.to_be_bytes());
        msg.extend_from_slice(&version.to_be_bytes());
        msg.extend_from_slice(&self.correlation.to_be_bytes());
        let client_id = self.client_id.clone();
        put_str(&mut msg, &client_id);
        msg.extend_from_slice(body);
        self.stream.write_all(&(msg.len() as i32).to_be_bytes())?;
        self.stream.write_all(&msg)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = usize::try_from(i32::from_be_bytes(len)).map_err(|_| bad("negative size"))?;
        let mut resp = vec![0u8; len];
        self.stream.read_exact(&mut resp)?;
        let mut r = Reader(&resp);
        if r.i32()? != self.correlation {
            return Err(bad("correlation id mismatch"));
        }
        Ok(r.0.to_vec())
    }

    /// (error code, host, port) of the group's coordinator.
    pub fn find_coordinator(&mut self, group: &str) -> io::Result<(i16, String, i32)> {
        let mut body = Vec::new();
        put_str(&mut body, group);
        let resp = self.request(10, 0, &body)?;
        let mut r = Reader(&resp);
        let error = r.i16()?;
        let _node = r.i32()?;
        Ok((error, r.string()?, r.i32()?))
    }

    pub fn join(
        &mut self,
        group: &str,
        member_id: &str,
        session_ms: i32,
    ) -> io::Result<JoinResponse> {
        let mut body = Vec::new();
        put_str(&mut body, group);
        body.extend_from_slice(&session_ms.to_be_bytes());
        body.extend_from_slice(&session_ms.to_be_bytes());
        put_str(&mut body, member_id);
        put_str(&mut body, "consumer");
        body.extend_from_slice(&1i32.to_be_bytes());
        put_str(&mut body, "range");
        put_bytes(&mut body, &consumer_metadata());
        let resp = self.request(11, 4, &body)?;
        let mut r = Reader(&resp);
        let _throttle = r.i32()?;
        let error = r.i16()?;
        let generation = r.i32()?;
        let _protocol = r.string()?;
        let leader = r.string()?;
        let member_id = r.string()?;
        let n = r.i32()?.max(0);
        let mut members = Vec::new();
        for _ in 0..n {
            members.push(r.string()?);
            let _metadata = r.bytes()?;
        }
        Ok(JoinResponse {
            error,
            generation,
            leader,
            member_id,
            members,
        })
    }

    /// (error code, this member's assignment).
    pub fn sync(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: &[(String, Vec<u8>)],
    ) -> io::Result<(i16, Vec<u8>)> {
        let mut body = Vec::new();
        put_str(&mut body, group);
        body.extend_from_slice(&generation.to_be_bytes());
        put_str(&mut body, member_id);
        body.extend_from_slice(&(assignments.len() as i32).to_be_bytes());
        for (m, a) in assignments {
            put_str(&mut body, m);
            put_bytes(&mut body, a);
        }
        let resp = self.request(14, 0, &body)?;
        let mut r = Reader(&resp);
        Ok((r.i16()?, r.bytes()?))
    }

    pub fn heartbeat(&mut self, group: &str, generation: i32, member_id: &str) -> io::Result<i16> {
        let mut body = Vec::new();
        put_str(&mut body, group);
        body.extend_from_slice(&generation.to_be_bytes());
        put_str(&mut body, member_id);
        let resp = self.request(12, 0, &body)?;
        Reader(&resp).i16()
    }
}
