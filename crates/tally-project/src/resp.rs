//! The commit's own connection to Redis: requests written straight into one buffer in Redis's
//! protocol (RESP2), replies scanned in place.
//!
//! Why not the `redis` crate here, as everywhere else in this crate: a commit is thousands of
//! commands in one `MULTI`/`EXEC`, and the crate builds each as a command object, copies it
//! into a packed buffer, then parses every reply (`+QUEUED` per command, then the `EXEC` array)
//! into an allocated value tree. `perf` put those three steps at about 40% of a rebuilding
//! projector's CPU. A commit needs much less: the bytes of its commands, and of the replies only
//! whether the transaction ran and the first error, if any. Connecting (address, `AUTH`,
//! `SELECT`) still follows the crate's parsing of the URL.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read from the socket at a time, at least.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Nesting of arrays within one reply at most. The commit's commands answer with scalars; a
/// deeper reply means the connection is not talking to the Redis it expects.
const REPLY_DEPTH_MAX: usize = 4;
/// The length of one line of a reply (a status, an error, an integer or a length) at most.
const REPLY_LINE_BYTES_MAX: usize = 64 * 1024;
/// A bulk string of a reply at most: the commit's commands answer with ids and counts.
const REPLY_BULK_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Elements of one reply array at most: `EXEC` answers one per command of a commit, a few per
/// event of at most a few thousand events. A longer array would only grow the read buffer.
const REPLY_ARRAY_ITEMS_MAX: usize = 1 << 20;

/// Commands in Redis's request encoding (arrays of bulk strings), appended to one buffer.
#[derive(Debug, Default, Clone)]
pub struct Commands {
    bytes: Vec<u8>,
    count: usize,
    /// Arguments the last command announced and has not been given yet: a command with more
    /// or fewer than it announced would run the rest of the buffer together.
    arguments_due: usize,
}

impl Commands {
    pub fn with_capacity(bytes: usize) -> Commands {
        Commands {
            bytes: Vec::with_capacity(bytes),
            count: 0,
            arguments_due: 0,
        }
    }

    /// Starts a command of `arguments` arguments (its name included); exactly that many
    /// [`Commands::arg`]s must follow.
    pub fn command(&mut self, arguments: usize) -> &mut Commands {
        assert_eq!(
            self.arguments_due, 0,
            "the command before has all its arguments"
        );
        assert!(arguments > 0, "a command has a name");
        self.count += 1;
        self.arguments_due = arguments;
        self.line(b'*', arguments as u64)
    }

    pub fn arg(&mut self, argument: impl AsRef<[u8]>) -> &mut Commands {
        self.arguments_due = self
            .arguments_due
            .checked_sub(1)
            .expect("no more arguments than the command announced");
        let argument = argument.as_ref();
        self.line(b'$', argument.len() as u64);
        self.bytes.extend_from_slice(argument);
        self.bytes.extend_from_slice(b"\r\n");
        self
    }

    /// An integer argument, in decimal.
    pub fn number(&mut self, number: impl itoa::Integer) -> &mut Commands {
        self.arg(itoa::Buffer::new().format(number))
    }

    /// Commands written so far.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn bytes(&self) -> &[u8] {
        assert_eq!(
            self.arguments_due, 0,
            "the last command has all its arguments"
        );
        &self.bytes
    }

    fn line(&mut self, kind: u8, number: u64) -> &mut Commands {
        self.bytes.push(kind);
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        self
    }
}

/// What one reply was, as far as a commit cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+...`: `OK`, `QUEUED`.
    Status,
    /// `-...`: Redis refused the command; its message.
    Error(String),
    Integer(i64),
    /// A bulk string, or a null one.
    Bulk,
    /// An array of this many replies (scanned, not kept); `None` for a null array, which is how
    /// `EXEC` says a watched key changed.
    Array(Option<usize>),
}

/// Scans the reply at the start of `input`: `Ok(None)` while it is incomplete, else what it
/// was and its length in bytes. An array is scanned whole, its elements included, and
/// reported as [`Reply::Array`]; an error among its elements is reported instead.
pub fn scan(input: &[u8]) -> anyhow::Result<Option<(Reply, usize)>> {
    scan_at(input, 0)
}

fn scan_at(input: &[u8], depth: usize) -> anyhow::Result<Option<(Reply, usize)>> {
    let Some((&kind, rest)) = input.split_first() else {
        return Ok(None);
    };
    let Some(end) = rest.windows(2).position(|pair| pair == b"\r\n") else {
        if rest.len() > REPLY_LINE_BYTES_MAX {
            bail!("a reply line of more than {REPLY_LINE_BYTES_MAX} bytes");
        }
        return Ok(None);
    };
    let line = &rest[..end];
    let after_line = 1 + end + 2;
    let number = || -> anyhow::Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| anyhow!("a reply's length or integer is {:?}", show(line)))
    };
    match kind {
        b'+' => Ok(Some((Reply::Status, after_line))),
        b'-' => Ok(Some((
            Reply::Error(String::from_utf8_lossy(line).into_owned()),
            after_line,
        ))),
        b':' => Ok(Some((Reply::Integer(number()?), after_line))),
        b'$' => {
            let length = number()?;
            if length < 0 {
                return Ok(Some((Reply::Bulk, after_line)));
            }
            let length = length as usize;
            if length > REPLY_BULK_BYTES_MAX {
                bail!("a bulk reply of {length} bytes, more than {REPLY_BULK_BYTES_MAX}");
            }
            let total = after_line + length + 2;
            if input.len() < total {
                return Ok(None);
            }
            if &input[total - 2..total] != b"\r\n" {
                bail!("a bulk reply of {length} bytes does not end its line");
            }
            Ok(Some((Reply::Bulk, total)))
        }
        b'*' => {
            let length = number()?;
            if length < 0 {
                return Ok(Some((Reply::Array(None), after_line)));
            }
            if length as u64 > REPLY_ARRAY_ITEMS_MAX as u64 {
                bail!("a reply array of {length} elements, more than {REPLY_ARRAY_ITEMS_MAX}");
            }
            if depth >= REPLY_DEPTH_MAX {
                bail!("a reply nests arrays more than {REPLY_DEPTH_MAX} deep");
            }
            let mut offset = after_line;
            let mut error = None;
            for _ in 0..length {
                let Some((reply, used)) = scan_at(&input[offset..], depth + 1)? else {
                    return Ok(None);
                };
                if let (Reply::Error(message), None) = (reply, &error) {
                    error = Some(message);
                }
                offset += used;
            }
            let reply = error.map_or(Reply::Array(Some(length as usize)), Reply::Error);
            Ok(Some((reply, offset)))
        }
        other => bail!(
            "a reply starts with {:?}: this is not a Redis server speaking RESP2",
            char::from(other)
        ),
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned()
}

/// The connection lost or timed out: the outcome of what was sent on it is unknown, and trying
/// again on a new connection may succeed.
#[derive(Debug, thiserror::Error)]
#[error("the connection to Redis failed: {0}")]
pub struct ConnectionLost(#[source] pub std::io::Error);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// A connection that sends [`Commands`] and scans their replies.
pub struct Connection {
    stream: Box<dyn Stream>,
    /// Read and not yet scanned: `input[start..]`.
    input: Vec<u8>,
    start: usize,
    timeout: Duration,
}

impl Connection {
    /// Connects as `info` says (address, user and password, database), each step within
    /// `timeout`.
    pub async fn connect(info: &ConnectionInfo, timeout: Duration) -> anyhow::Result<Connection> {
        let stream: Box<dyn Stream> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
                let stream = tokio::time::timeout(timeout, connect)
                    .await
                    .map_err(|_| lost(timed_out()))?
                    .map_err(lost)?;
                // Without it, Nagle's algorithm holds the tail of a large transaction back
                // until Redis acknowledges the rest, which it may delay by up to 40 ms.
                stream.set_nodelay(true).map_err(lost)?;
                Box::new(stream)
            }
            ConnectionAddr::Unix(path) => {
                let connect = tokio::net::UnixStream::connect(path);
                Box::new(
                    tokio::time::timeout(timeout, connect)
                        .await
                        .map_err(|_| lost(timed_out()))?
                        .map_err(lost)?,
                )
            }
            other => bail!("the commit connection cannot reach {other}: use redis:// or unix://"),
        };
        let mut connection = Connection {
            stream,
            input: Vec::with_capacity(READ_CHUNK_BYTES),
            start: 0,
            timeout,
        };
        let settings = info.redis_settings();
        let mut hello = Commands::default();
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => hello.command(3).arg("AUTH").arg(user).arg(password),
                None => hello.command(2).arg("AUTH").arg(password),
            };
        }
        if settings.db() != 0 {
            hello.command(2).arg("SELECT").number(settings.db());
        }
        if hello.count() > 0 {
            connection.send(hello.bytes()).await?;
            for _ in 0..hello.count() {
                if let Reply::Error(message) = connection.reply().await? {
                    bail!("Redis refused the commit connection: {message}");
                }
            }
        }
        Ok(connection)
    }

    /// Writes `bytes` (whole commands) to Redis.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| lost(timed_out()))?
            .map_err(lost)?;
        Ok(())
    }

    /// The next reply, read as far as it takes.
    pub async fn reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some((reply, used)) = scan(&self.input[self.start..])
                .context("Redis answered the commit connection with something unexpected")?
            {
                self.start += used;
                if self.start == self.input.len() {
                    self.input.clear();
                    self.start = 0;
                }
                return Ok(reply);
            }
            self.fill().await?;
        }
    }

    /// The next `count` replies; the first error among them, if any.
    pub async fn replies(&mut self, count: usize) -> anyhow::Result<Option<String>> {
        let mut first_error = None;
        for _ in 0..count {
            if let (Reply::Error(message), None) = (self.reply().await?, &first_error) {
                first_error = Some(message);
            }
        }
        Ok(first_error)
    }

    /// Reads more of the socket after what is buffered.
    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.reserve(READ_CHUNK_BYTES);
        let read = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.input))
            .await
            .map_err(|_| lost(timed_out()))?
            .map_err(lost)?;
        if read == 0 {
            return Err(lost(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            )));
        }
        Ok(())
    }
}

fn lost(error: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(ConnectionLost(error))
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis did not answer in time")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut commands = Commands::default();
        commands.command(3).arg("SET").arg("k").number(42u64);
        commands.command(1).arg("EXEC");
        assert_eq!(commands.count(), 2);
        assert_eq!(
            commands.bytes(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n42\r\n*1\r\n$4\r\nEXEC\r\n"
        );
    }

    #[test]
    #[should_panic(expected = "the command before has all its arguments")]
    fn a_command_short_of_its_arguments_is_refused() {
        let mut commands = Commands::default();
        commands.command(3).arg("SET").arg("k");
        commands.command(1).arg("EXEC");
    }

    #[test]
    #[should_panic(expected = "no more arguments than the command announced")]
    fn an_argument_beyond_the_announced_ones_is_refused() {
        let mut commands = Commands::default();
        commands.command(1).arg("EXEC").arg("extra");
    }

    #[test]
    fn scans_each_kind_of_reply() {
        assert_eq!(scan(b"+QUEUED\r\n").unwrap(), Some((Reply::Status, 9)));
        assert_eq!(
            scan(b"-WRONGTYPE no\r\n").unwrap(),
            Some((Reply::Error("WRONGTYPE no".into()), 15))
        );
        assert_eq!(scan(b":-7\r\n").unwrap(), Some((Reply::Integer(-7), 5)));
        assert_eq!(scan(b"$5\r\n1-0\r\n\r\n").unwrap(), Some((Reply::Bulk, 11)));
        assert_eq!(scan(b"$-1\r\n").unwrap(), Some((Reply::Bulk, 5)));
        assert_eq!(scan(b"*-1\r\n").unwrap(), Some((Reply::Array(None), 5)));
        assert_eq!(
            scan(b"*2\r\n:1\r\n$3\r\n9-1\r\n+OK").unwrap(),
            Some((Reply::Array(Some(2)), 17))
        );
    }

    #[test]
    fn an_error_inside_an_array_is_reported() {
        let reply = b"*3\r\n:1\r\n-WRONGTYPE first\r\n-ERR second\r\n";
        assert_eq!(
            scan(reply).unwrap(),
            Some((Reply::Error("WRONGTYPE first".into()), reply.len()))
        );
    }

    #[test]
    fn what_is_not_resp_is_refused() {
        assert!(scan(b"HTTP/1.1 400\r\n").is_err());
        assert!(scan(b":twelve\r\n").is_err());
        assert!(scan(b"$3\r\nabcde\r\n").is_err());
        assert!(scan(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
        // Refused from its header, before any element is read.
        assert!(scan(format!("*{}\r\n", REPLY_ARRAY_ITEMS_MAX + 1).as_bytes()).is_err());
        assert_eq!(
            scan(format!("*{REPLY_ARRAY_ITEMS_MAX}\r\n").as_bytes()).unwrap(),
            None
        );
    }

    /// A reply in RESP2, for the property below.
    fn reply() -> impl Strategy<Value = Vec<u8>> {
        let scalar = prop_oneof![
            "[A-Z]{0,8}".prop_map(|text| format!("+{text}\r\n").into_bytes()),
            "[A-Z ]{0,8}".prop_map(|text| format!("-{text}\r\n").into_bytes()),
            any::<i64>().prop_map(|number| format!(":{number}\r\n").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| {
                let mut out = format!("${}\r\n", bytes.len()).into_bytes();
                out.extend_from_slice(&bytes);
                out.extend_from_slice(b"\r\n");
                out
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
        ];
        scalar.prop_recursive(3, 32, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(|items| {
                let mut out = format!("*{}\r\n", items.len()).into_bytes();
                for item in items {
                    out.extend_from_slice(&item);
                }
                out
            })
        })
    }

    proptest! {
        /// A whole reply is scanned to its end and no further, whatever follows it; any prefix
        /// of it is incomplete, never an error or a different reply.
        #[test]
        fn a_reply_is_scanned_exactly(reply in reply(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut input = reply.clone();
            input.extend_from_slice(&tail);
            let (_, used) = scan(&input).unwrap().expect("a whole reply");
            prop_assert_eq!(used, reply.len());
            for cut in 0..reply.len() {
                prop_assert_eq!(scan(&reply[..cut]).unwrap(), None);
            }
        }

        /// Arbitrary bytes end in a reply, an error or "incomplete": never a panic.
        #[test]
        fn arbitrary_bytes_do_not_panic(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = scan(&input);
        }
    }
}
