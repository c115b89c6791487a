//! A synchronous rtnetlink socket: send one request, wait for its acknowledgement, or read a
//! whole dump. Messages are built and parsed by `netlink-packet-route`; no async runtime, so
//! each request costs one system call pair and nothing else.

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A failed kernel request, with what plumb was trying to do.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl Error {
    pub fn new(what: impl Into<String>, source: io::Error) -> Self {
        Error {
            what: what.into(),
            source,
        }
    }

    /// The errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// An rtnetlink socket bound in the network namespace it was opened in.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Self> {
        let wrap = |e| Error::new("open rtnetlink socket", e);
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(wrap)?;
        socket.bind_auto().map_err(wrap)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(wrap)?;
        socket.set_ext_ack(true).map_err(wrap)?;
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16, what: &dyn Fn() -> String) -> Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(|e| Error::new(what(), e))?;
        Ok(self.sequence)
    }

    /// Reads replies to `sequence`, handing each inner message to `each`, until the ack
    /// (for a request) or the end of the dump.
    fn receive(
        &mut self,
        sequence: u32,
        what: &dyn Fn() -> String,
        each: &mut dyn FnMut(RouteNetlinkMessage),
    ) -> Result<()> {
        loop {
            let size = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(|e| Error::new(what(), e))?;
            let mut offset = 0;
            while offset < size {
                let packet = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..size])
                    .map_err(|e| Error::new(what(), io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
                let length = packet.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += length;
                if packet.header.sequence_number != sequence {
                    continue;
                }
                match packet.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(Error::new(what(), io::Error::from_raw_os_error(-code.get()))),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => each(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request and waits for the kernel's acknowledgement.
    pub fn request(&mut self, message: RouteNetlinkMessage, flags: u16, what: impl Fn() -> String) -> Result<()> {
        let sequence = self.send(message, NLM_F_REQUEST | NLM_F_ACK | flags, &what)?;
        self.receive(sequence, &what, &mut |_| {})
    }

    /// Sends a request that answers (a GET naming one object) and collects the answer.
    pub fn query(
        &mut self,
        message: RouteNetlinkMessage,
        what: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let sequence = self.send(message, NLM_F_REQUEST | NLM_F_ACK, &what)?;
        let mut out = Vec::new();
        self.receive(sequence, &what, &mut |m| out.push(m))?;
        Ok(out)
    }

    /// Sends a dump request and collects every message of the reply.
    pub fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        what: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let sequence = self.send(message, NLM_F_REQUEST | NLM_F_DUMP, &what)?;
        let mut out = Vec::new();
        self.receive(sequence, &what, &mut |m| out.push(m))?;
        Ok(out)
    }
}
