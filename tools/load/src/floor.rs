//! The loopback floor: an HTTP/1.1 server that does nothing but answer every
//! request with a fixed `/predict`-shaped reply, one blocking thread per
//! connection. No real server can answer the same client faster on the same
//! machine, so it calibrates what the network path alone costs there.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
};

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 62\r\n\r\n\
{\"modelVersion\":\"1\",\"prediction\":[0.0004,0.2347,0.7647375000]}";

/// Starts the server on a free loopback port; it lives as long as the process.
pub fn spawn() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("floor-accept".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = std::thread::Builder::new().name("floor-conn".into()).spawn(move || serve(stream));
        }
    })?;
    Ok(addr)
}

fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        // Answer each complete request (head and the body it announces) in the buffer.
        while let Some(len) = request_len(&buf) {
            stream.write_all(REPLY)?;
            buf.drain(..len);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Length of the first complete request in `buf`, if it is all there.
fn request_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let body = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + body).then_some(end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_whole_body() {
        let req = b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(request_len(&req[..req.len() - 1]), None);
        assert_eq!(request_len(req), Some(req.len()));
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n\r\nPOST"), Some(18));
    }
}
