//! The Redis read store: its key layout, the rows' encoding, leases, and the fenced commit.
//!
//! Every write of a member is one transaction ([`RedisStore::commit`]): it watches the keys of
//! the partitions it moves, checks on Redis's own clock that the member still holds each lease
//! with the token it was given, and only then sends the rows and the partitions' checkpoints as
//! one `MULTI`/`EXEC`. A member that was paused or cut off past its lease finds its token gone
//! and writes nothing; one whose lease is taken over between the check and the `EXEC` has its
//! `EXEC` refused, as the takeover changed a watched key: that is the fencing. The checkpoint
//! is written last, so a transaction Redis broke off half-way never claims rows it did not
//! write.
//!
//! Key layout (every key starts with the prefix, `tally:` by default); numbers are decimal:
//!
//! | key | type | content |
//! |-----|------|---------|
//! | `account:{id}` | hash | `ledger`, `balance`, `debits`, `credits`, `debits_pending`, `credits_pending`, `allow_overdraft` (0/1), `version` |
//! | `history:{id}` | list | one element per event that touched the account, in log order: its JSON, as `GET /v1/accounts/{id}/history` renders it (with its `position` and `side`) |
//! | `ledger:{code}` | hash | `accounts`, `transfers`, `volume`, `deposited`, `withdrawn`, `pending`, `pending_amount` |
//! | `daily:{code}:{YYYY-MM-DD}` | hash | `transfers`, `volume` (UTC days) |
//! | `days:{code}` | sorted set | the days of `daily:`, scored `YYYYMMDD` |
//! | `pending:{position}` | hash | an open pending transfer: `ledger`, `transfer_id`, `from`, `to`, `amount` |
//! | `group:{group}` | hash | `partitions`: fixed when the group is created |
//! | `group:{group}:partition:{p}` | hash | `position` (the next event to apply), `owner`, `token`, `expires_ms`, `event_timestamp`, `applied_ms` |
//! | `group:{group}:members` | sorted set | live members, scored by the expiry of their heartbeat (ms) |

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};

use crate::fold::{AccountRow, Changes, DayRow, LedgerRow, Missing, PendingRow, Rows};
use crate::resp::{self, Commands, Reply};

/// How long one Redis call may take before the member treats the connection as broken.
pub const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of one prefix and group.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    group: String,
}

impl Keys {
    pub fn new(prefix: &str, group: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            group: group.to_owned(),
        }
    }

    pub fn account(&self, id: &str) -> String {
        let mut key = String::new();
        self.account_into(&mut key, id);
        key
    }

    pub fn history(&self, id: &str) -> String {
        let mut key = String::new();
        self.history_into(&mut key, id);
        key
    }

    /// [`Keys::account`], into `key`.
    fn account_into(&self, key: &mut String, id: &str) {
        key.clear();
        key.push_str(&self.prefix);
        key.push_str("account:");
        key.push_str(id);
    }

    /// [`Keys::history`], into `key`.
    fn history_into(&self, key: &mut String, id: &str) {
        key.clear();
        key.push_str(&self.prefix);
        key.push_str("history:");
        key.push_str(id);
    }

    pub fn ledger(&self, code: &str) -> String {
        format!("{}ledger:{code}", self.prefix)
    }

    pub fn daily(&self, code: &str, day: &str) -> String {
        format!("{}daily:{code}:{day}", self.prefix)
    }

    pub fn days(&self, code: &str) -> String {
        format!("{}days:{code}", self.prefix)
    }

    pub fn pending(&self, position: u64) -> String {
        format!("{}pending:{position}", self.prefix)
    }

    pub fn group(&self) -> String {
        format!("{}group:{}", self.prefix, self.group)
    }

    pub fn partition(&self, partition: u32) -> String {
        format!("{}group:{}:partition:{partition}", self.prefix, self.group)
    }

    pub fn members(&self) -> String {
        format!("{}group:{}:members", self.prefix, self.group)
    }

    /// The pattern of every key of the prefix, for a rebuild that starts from nothing.
    pub fn everything(&self) -> String {
        format!("{}*", self.prefix)
    }
}

/// Redis's clock in milliseconds, the one every lease is measured on, so that members' clocks
/// need not agree.
const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// KEYS[1] partition; ARGV member, lease ms. Returns {token, position} when the member holds
/// the lease afterwards. A lease that lapsed is a new lease (a new token), even for the member
/// that held it: what it cached may have been overwritten meanwhile.
const ACQUIRE: &str = r"
local s = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires_ms', 'position')
local now = now_ms()
local live = tonumber(s[3] or '0') > now
if live and s[1] ~= ARGV[1] then return false end
local token = s[2]
if not (live and s[1] == ARGV[1]) then
  token = tostring(redis.call('HINCRBY', KEYS[1], 'token', 1))
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'expires_ms', now + tonumber(ARGV[2]))
if not s[4] then redis.call('HSET', KEYS[1], 'position', '0') end
return {token, s[4] or '0'}
";

/// KEYS[1] partition; ARGV member, token, lease ms. Extends a live lease; 1 if it did.
const RENEW: &str = r"
local s = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires_ms')
local now = now_ms()
if s[1] ~= ARGV[1] or s[2] ~= ARGV[2] or tonumber(s[3] or '0') <= now then return 0 end
redis.call('HSET', KEYS[1], 'expires_ms', now + tonumber(ARGV[3]))
return 1
";

/// KEYS[1] partition; ARGV member, token. Gives a lease up at once, for a rebalance or a clean
/// stop.
const RELEASE: &str = r"
local s = redis.call('HMGET', KEYS[1], 'owner', 'token')
if s[1] ~= ARGV[1] or s[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'expires_ms', '0')
return 1
";

/// KEYS[1] members; ARGV member, ttl ms (0 to leave). Returns the live members.
const HEARTBEAT: &str = r"
local now = now_ms()
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// KEYS: the partitions a commit moves; ARGV: member, then the token of each partition. Returns
/// 0 when the member holds every lease, or i for the first lease it does not hold (by KEYS
/// index).
const FENCES: &str = r"
local now = now_ms()
for i, key in ipairs(KEYS) do
  local s = redis.call('HMGET', key, 'owner', 'token', 'expires_ms')
  if s[1] ~= ARGV[1] or s[2] ~= ARGV[i + 1] or tonumber(s[3] or '0') <= now then
    return i
  end
end
return 0
";

/// Sent inside a commit's `MULTI`, last. KEYS: the partitions it moves; ARGV: lease ms, the
/// last event's timestamp, then the new checkpoint of each partition. Moves the checkpoints and
/// renews the leases on Redis's clock (a plain `HSET` could not read it).
const CHECKPOINTS: &str = r"
local now = now_ms()
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'position', ARGV[i + 2], 'expires_ms', now + tonumber(ARGV[1]),
    'event_timestamp', ARGV[2], 'applied_ms', now)
end
return 0
";

/// How many times a commit is tried when its transaction was aborted although every lease was
/// still held when checked (a key was touched in between, by a member that then found the lease
/// live): the next try checks again and tells a lost lease from a race.
const COMMIT_ATTEMPTS_MAX: u32 = 3;

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW_MS}{body}"))
}

/// A partition's lease as its holder knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub token: u64,
    /// The checkpoint: the next position to apply.
    pub position: u64,
}

/// A commit ready to send: the writes of the events it applies, and the partitions it moves.
pub struct Commit {
    member: String,
    /// Partition → (the lease it is written under, its new checkpoint).
    pub fences: BTreeMap<u32, (Lease, u64)>,
    /// The transaction: `MULTI`, the rows, the checkpoints, `EXEC`.
    writes: Commands,
}

/// The outcome of a commit.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    Written,
    /// The lease of this partition is no longer the member's: nothing was written.
    Fenced(u32),
}

/// A partition as `tally project status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PartitionState {
    pub partition: u32,
    pub owner: Option<String>,
    pub token: u64,
    /// Milliseconds the lease still runs (0 when it lapsed or was released).
    pub lease_remaining_ms: u64,
    pub position: u64,
    pub event_timestamp: Option<String>,
}

/// The connection details of `url`.
fn connection_info(url: &str) -> anyhow::Result<redis::ConnectionInfo> {
    Ok(redis::IntoConnectionInfo::into_connection_info(url)
        .with_context(|| format!("{url} is not a Redis URL (redis://HOST:PORT[/DB])"))?
        // Without it, Nagle's algorithm holds the tail of a large transaction back until
        // Redis acknowledges the rest, which it may delay by up to 40 ms.
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

/// Sends commits, on a connection of its own: `WATCH` is state of the connection, and a commit
/// runs while the next pages are loaded and folded. After any failure the connection is in an
/// unknown state (watching, or half-way through a transaction), so it is dropped, and the next
/// commit opens a new one.
pub struct Committer {
    url: String,
    keys: Keys,
    info: redis::ConnectionInfo,
    connection: Option<resp::Connection>,
    /// [`FENCES`] with its helpers, sent as `EVAL`.
    fences: String,
}

impl Committer {
    pub async fn connect(url: &str, keys: Keys) -> anyhow::Result<Committer> {
        let info = connection_info(url)?;
        let connection = resp::Connection::connect(&info, REDIS_CALL_TIMEOUT)
            .await
            .with_context(|| {
                format!("cannot connect to Redis at {url}; is redis-server running?")
            })?;
        Ok(Committer {
            url: url.to_owned(),
            keys,
            info,
            connection: Some(connection),
            fences: format!("{NOW_MS}{FENCES}"),
        })
    }

    /// Sends `commit`: its writes and every fenced partition's new checkpoint, in one
    /// transaction, if and only if its member still holds each lease with its token.
    ///
    /// The fence is optimistic: the partitions' keys are watched, the leases checked (on Redis's
    /// clock), and the writes sent as one `MULTI`/`EXEC`. Any other member that takes a lease
    /// over changes its key, which makes Redis refuse the `EXEC`: nothing is written, and the
    /// next check finds the lease gone. Plain commands in a transaction cost Redis less than
    /// half of what the same commands cost called from a Lua script: Redis's `SLOWLOG` put the
    /// Lua commit of a page of 1,000 transfers at about 19 ms, `redis-benchmark` runs that many
    /// such commands, pipelined, in about 8 ms.
    pub async fn commit(&mut self, commit: &Commit) -> anyhow::Result<Committed> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => resp::Connection::connect(&self.info, REDIS_CALL_TIMEOUT)
                .await
                .with_context(|| format!("cannot connect to Redis at {}", self.url))?,
        };
        let committed = self.attempt(&mut connection, commit).await?;
        self.connection = Some(connection);
        Ok(committed)
    }

    async fn attempt(
        &self,
        connection: &mut resp::Connection,
        commit: &Commit,
    ) -> anyhow::Result<Committed> {
        let keys: Vec<String> = commit
            .fences
            .keys()
            .map(|partition| self.keys.partition(*partition))
            .collect();
        let mut check = Commands::default();
        check.command(1 + keys.len()).arg("WATCH");
        for key in &keys {
            check.arg(key);
        }
        check
            .command(4 + 2 * keys.len())
            .arg("EVAL")
            .arg(&self.fences)
            .number(keys.len() as u64);
        for key in &keys {
            check.arg(key);
        }
        check.arg(&commit.member);
        for (held, _) in commit.fences.values() {
            check.number(held.token);
        }
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            connection.send(check.bytes()).await?;
            if let Some(error) = connection.replies(1).await? {
                bail!("Redis refused to WATCH the partitions: {error}");
            }
            let failed = match connection.reply().await? {
                Reply::Integer(failed) => failed,
                other => bail!("the fence script answered {other:?}, not a number"),
            };
            if failed != 0 {
                connection.send(b"*1\r\n$7\r\nUNWATCH\r\n").await?;
                if let Some(error) = connection.replies(1).await? {
                    bail!("Redis refused to UNWATCH: {error}");
                }
                let index = usize::try_from(failed - 1).ok();
                let partition = index.and_then(|index| commit.fences.keys().nth(index));
                let partition = partition.ok_or_else(|| {
                    anyhow!("the fence script named lease {failed} of {}", keys.len())
                })?;
                return Ok(Committed::Fenced(*partition));
            }
            debug_assert!(commit.writes.count() >= 3, "MULTI, the checkpoints, EXEC");
            connection.send(commit.writes.bytes()).await?;
            // `MULTI`'s `OK` and a `QUEUED` for each command: a command Redis could not queue
            // (a malformed one) makes it refuse the whole `EXEC`.
            let queued = connection.replies(commit.writes.count() - 1).await?;
            match connection.reply().await? {
                Reply::Array(Some(_)) => return Ok(Committed::Written),
                // A watched key changed after the check: try again, which tells a lost lease
                // from a race.
                Reply::Array(None) => continue,
                Reply::Error(error) => bail!(
                    "Redis refused the commit's transaction: {}",
                    queued.unwrap_or(error)
                ),
                other => bail!("Redis answered EXEC with {other:?}"),
            }
        }
        bail!(
            "{COMMIT_ATTEMPTS_MAX} commits in a row were refused although every lease was held: \
             something else keeps changing the group's partition keys"
        )
    }
}

pub struct RedisStore {
    connection: MultiplexedConnection,
    pub keys: Keys,
    acquire: Script,
    renew: Script,
    release: Script,
    heartbeat: Script,
}

impl RedisStore {
    pub async fn connect(url: &str, keys: Keys) -> anyhow::Result<RedisStore> {
        let client = redis::Client::open(connection_info(url)?)
            .with_context(|| format!("{url} is not a Redis URL (redis://HOST:PORT[/DB])"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_CALL_TIMEOUT))
            .set_response_timeout(Some(REDIS_CALL_TIMEOUT));
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| {
                format!("cannot connect to Redis at {url}; is redis-server running?")
            })?;
        Ok(RedisStore {
            connection,
            keys,
            acquire: script(ACQUIRE),
            renew: script(RENEW),
            release: script(RELEASE),
            heartbeat: script(HEARTBEAT),
        })
    }

    /// The group's partition count: what it was created with, or `required` (else `default`)
    /// for a new group. An existing group with another count than `required` is an error.
    pub async fn group_partitions(
        &mut self,
        default: u32,
        required: Option<u32>,
    ) -> anyhow::Result<u32> {
        let key = self.keys.group();
        let _: bool = self
            .connection
            .hset_nx(&key, "partitions", required.unwrap_or(default))
            .await?;
        let stored = self
            .stored_partitions()
            .await?
            .context("the group vanished as it was created")?;
        match required {
            Some(required) if required != stored => bail!(
                "group {key} was created with {stored} partitions, not {required}: pass \
                 --partitions {stored}, or use another --group"
            ),
            _ => Ok(stored),
        }
    }

    /// The partition count of an existing group.
    pub async fn stored_partitions(&mut self) -> anyhow::Result<Option<u32>> {
        Ok(self
            .connection
            .hget(self.keys.group(), "partitions")
            .await?)
    }

    /// Records that `member` is alive for `ttl` (or leaves, with `None`); returns the live
    /// members, sorted.
    pub async fn heartbeat(
        &mut self,
        member: &str,
        ttl: Option<Duration>,
    ) -> anyhow::Result<Vec<String>> {
        let ttl_ms = ttl.map_or(0, |ttl| ttl.as_millis().max(1) as u64);
        let members: Vec<String> = self
            .heartbeat
            .key(self.keys.members())
            .arg(member)
            .arg(ttl_ms)
            .invoke_async(&mut self.connection)
            .await?;
        Ok(members)
    }

    /// The live members, by name, without heartbeating.
    pub async fn live_members(&mut self) -> anyhow::Result<Vec<String>> {
        let (seconds, _): (u64, u64) = redis::cmd("TIME").query_async(&mut self.connection).await?;
        let mut members: Vec<String> = self
            .connection
            .zrangebyscore(self.keys.members(), seconds * 1000, "+inf")
            .await?;
        members.sort();
        Ok(members)
    }

    pub async fn acquire(
        &mut self,
        partition: u32,
        member: &str,
        lease: Duration,
    ) -> anyhow::Result<Option<Lease>> {
        let answer: Option<(String, String)> = self
            .acquire
            .key(self.keys.partition(partition))
            .arg(member)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut self.connection)
            .await?;
        answer
            .map(|(token, position)| {
                Ok(Lease {
                    token: token.parse().context("lease token")?,
                    position: position.parse().context("partition position")?,
                })
            })
            .transpose()
    }

    pub async fn renew(
        &mut self,
        partition: u32,
        member: &str,
        lease: Lease,
        duration: Duration,
    ) -> anyhow::Result<bool> {
        let renewed: i64 = self
            .renew
            .key(self.keys.partition(partition))
            .arg(member)
            .arg(lease.token.to_string())
            .arg(duration.as_millis() as u64)
            .invoke_async(&mut self.connection)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release(
        &mut self,
        partition: u32,
        member: &str,
        lease: Lease,
    ) -> anyhow::Result<()> {
        let _: i64 = self
            .release
            .key(self.keys.partition(partition))
            .arg(member)
            .arg(lease.token.to_string())
            .invoke_async(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Reads the rows named by `missing`, in one round trip.
    pub async fn load(&mut self, missing: &Missing) -> anyhow::Result<Rows> {
        let mut pipe = redis::pipe();
        for account in &missing.accounts {
            pipe.hgetall(self.keys.account(account));
        }
        for pending in &missing.pendings {
            pipe.hgetall(self.keys.pending(*pending));
        }
        for ledger in &missing.ledgers {
            pipe.hgetall(self.keys.ledger(ledger));
        }
        for (ledger, day) in &missing.days {
            pipe.hgetall(self.keys.daily(ledger, day));
        }
        let mut hashes: std::vec::IntoIter<HashMap<String, String>> = pipe
            .query_async::<Vec<HashMap<String, String>>>(&mut self.connection)
            .await?
            .into_iter();
        let mut next = || hashes.next().filter(|hash| !hash.is_empty());
        let mut rows = Rows::default();
        for account in &missing.accounts {
            let row = next().map(|hash| decode_account(&hash)).transpose();
            let row =
                row.with_context(|| format!("{} is malformed", self.keys.account(account)))?;
            rows.accounts.insert(account.clone(), row);
        }
        for pending in &missing.pendings {
            let row = next().map(|hash| decode_pending(&hash)).transpose();
            let row =
                row.with_context(|| format!("{} is malformed", self.keys.pending(*pending)))?;
            rows.pendings.insert(*pending, row);
        }
        for ledger in &missing.ledgers {
            let row = next().map(|hash| decode_ledger(&hash)).transpose();
            let row = row.with_context(|| format!("{} is malformed", self.keys.ledger(ledger)))?;
            rows.ledgers.insert(ledger.clone(), row);
        }
        for (ledger, day) in &missing.days {
            let row = next().map(|hash| decode_day(&hash)).transpose();
            let row =
                row.with_context(|| format!("{} is malformed", self.keys.daily(ledger, day)))?;
            rows.days.insert((ledger.clone(), day.clone()), row);
        }
        Ok(rows)
    }

    /// Every partition of the group, for `tally project status`.
    pub async fn partitions(&mut self, partitions: u32) -> anyhow::Result<Vec<PartitionState>> {
        let mut pipe = redis::pipe();
        for partition in 0..partitions {
            pipe.hgetall(self.keys.partition(partition));
        }
        pipe.cmd("TIME");
        let mut answers: Vec<redis::Value> = pipe.query_async(&mut self.connection).await?;
        let (seconds, micros): (u64, u64) =
            redis::from_redis_value(answers.pop().context("TIME")?)?;
        let now_ms = seconds * 1000 + micros / 1000;
        answers
            .into_iter()
            .zip(0..)
            .map(|(value, partition)| {
                let hash: HashMap<String, String> = redis::from_redis_value(value)?;
                let number = |name: &str| -> anyhow::Result<u64> {
                    hash.get(name).map_or(Ok(0), |value| {
                        value
                            .parse()
                            .with_context(|| format!("{name} of partition {partition}"))
                    })
                };
                let expires_ms = number("expires_ms")?;
                Ok(PartitionState {
                    partition,
                    owner: hash.get("owner").filter(|owner| !owner.is_empty()).cloned(),
                    token: number("token")?,
                    lease_remaining_ms: expires_ms.saturating_sub(now_ms),
                    position: number("position")?,
                    event_timestamp: hash.get("event_timestamp").cloned(),
                })
            })
            .collect()
    }

    /// Deletes every key of the prefix: a rebuild starts from nothing.
    pub async fn delete_everything(&mut self) -> anyhow::Result<u64> {
        let pattern = self.keys.everything();
        let mut deleted = 0;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.connection)
                .await?;
            if !keys.is_empty() {
                let _: () = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut self.connection)
                    .await?;
                deleted += keys.len() as u64;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// Builds commits. Needs no connection, so that a commit is built off the async threads, while
/// the commit before it is on its way.
#[derive(Clone, Debug)]
pub struct Transactions {
    keys: Keys,
    /// [`CHECKPOINTS`] with its helpers: sent as `EVAL` within transactions, where a missing
    /// script (after a restart of Redis) could not be loaded and retried as `EVALSHA` is.
    checkpoints: String,
}

impl Transactions {
    pub fn new(keys: Keys) -> Transactions {
        Transactions {
            keys,
            checkpoints: format!("{NOW_MS}{CHECKPOINTS}"),
        }
    }

    /// The commit of `changes` (with the values in `rows`): one transaction (`MULTI`/`EXEC`)
    /// of plain commands that ends with the checkpoints of `fences`. It does not depend on the
    /// state of Redis, so it can be prepared while an earlier commit is still on its way.
    pub fn prepare(
        &self,
        member: &str,
        lease: Duration,
        fences: BTreeMap<u32, (Lease, u64)>,
        event_timestamp: &str,
        changes: &Changes,
        rows: &Rows,
    ) -> anyhow::Result<Commit> {
        let mut writes = self.writes(changes, rows)?;
        // The checkpoints go last, as a rule of the layout: even a transaction Redis broke off
        // half-way never claims rows it did not write.
        writes
            .command(5 + 2 * fences.len())
            .arg("EVAL")
            .arg(&self.checkpoints)
            .number(fences.len() as u64);
        for partition in fences.keys() {
            writes.arg(self.keys.partition(*partition));
        }
        writes.number(lease.as_millis() as u64).arg(event_timestamp);
        for (_, position) in fences.values() {
            writes.number(*position);
        }
        writes.command(1).arg("EXEC");
        Ok(Commit {
            member: member.to_owned(),
            fences,
            writes,
        })
    }

    /// `MULTI` and the writes of `changes`: the start of the commit's transaction.
    ///
    /// A commit holds thousands of commands and is built for every page while the one before
    /// it is on its way, so the commands are written straight into one buffer, sized up front.
    fn writes(&self, changes: &Changes, rows: &Rows) -> anyhow::Result<Commands> {
        let history: usize = changes.history.values().map(Vec::len).sum();
        let mut writes = Commands::with_capacity(
            changes.accounts.len() * 300
                + history * 280
                + (changes.pendings.len() + changes.ledgers.len() + changes.days.len()) * 300
                + 1024,
        );
        writes.command(1).arg("MULTI");
        let keys = &self.keys;
        let mut key = String::with_capacity(128);
        for account in &changes.accounts {
            let row = rows.accounts.get(account).and_then(Option::as_ref);
            let row = row.ok_or_else(|| anyhow!("changed account {account} has no row"))?;
            keys.account_into(&mut key, account);
            // Every field that can change is written whole, whether it changed or not: the
            // row in Redis is then the cache's row, however the commits before it went.
            // `ledger` and `allow_overdraft` never change: written once, with the account,
            // they spare Redis a quarter of the cost of each later write.
            let created = changes.created.contains(account);
            writes
                .command(if created { 18 } else { 14 })
                .arg("HSET")
                .arg(&key);
            if created {
                writes
                    .arg("ledger")
                    .arg(&row.ledger)
                    .arg("allow_overdraft")
                    .number(u8::from(row.allow_overdraft));
            }
            writes
                .arg("balance")
                .number(row.balance)
                .arg("debits")
                .number(row.debits)
                .arg("credits")
                .number(row.credits)
                .arg("debits_pending")
                .number(row.debits_pending)
                .arg("credits_pending")
                .number(row.credits_pending)
                .arg("version")
                .number(row.version);
        }
        // One `RPUSH` per account and commit, however many entries it gains: Redis's cost is
        // mostly per command.
        for (account, entries) in &changes.history {
            keys.history_into(&mut key, account);
            writes.command(2 + entries.len()).arg("RPUSH").arg(&key);
            for entry in entries {
                writes.arg(entry);
            }
        }
        for (position, row) in &changes.pendings {
            match row {
                Some(row) => writes
                    .command(12)
                    .arg("HSET")
                    .arg(keys.pending(*position))
                    .arg("ledger")
                    .arg(&row.ledger)
                    .arg("transfer_id")
                    .arg(&row.transfer_id)
                    .arg("from")
                    .arg(row.from.as_deref().unwrap_or_default())
                    .arg("to")
                    .arg(row.to.as_deref().unwrap_or_default())
                    .arg("amount")
                    .number(row.amount),
                None => writes.command(2).arg("DEL").arg(keys.pending(*position)),
            };
        }
        for ledger in &changes.ledgers {
            let row = rows.ledgers.get(ledger).and_then(Option::as_ref);
            let row = row.ok_or_else(|| anyhow!("changed ledger {ledger} has no row"))?;
            writes
                .command(16)
                .arg("HSET")
                .arg(keys.ledger(ledger))
                .arg("accounts")
                .number(row.accounts)
                .arg("transfers")
                .number(row.transfers)
                .arg("volume")
                .number(row.volume)
                .arg("deposited")
                .number(row.deposited)
                .arg("withdrawn")
                .number(row.withdrawn)
                .arg("pending")
                .number(row.pending)
                .arg("pending_amount")
                .number(row.pending_amount);
        }
        for (ledger, day) in &changes.days {
            let key = (ledger.clone(), day.clone());
            let row = rows.days.get(&key).and_then(Option::as_ref);
            let row = row.ok_or_else(|| anyhow!("changed day {day} of {ledger} has no row"))?;
            writes
                .command(6)
                .arg("HSET")
                .arg(keys.daily(ledger, day))
                .arg("transfers")
                .number(row.transfers)
                .arg("volume")
                .number(row.volume);
            let score: String = day.chars().filter(char::is_ascii_digit).collect();
            writes
                .command(4)
                .arg("ZADD")
                .arg(keys.days(ledger))
                .arg(score)
                .arg(day);
        }
        Ok(writes)
    }
}

fn get<T: std::str::FromStr>(hash: &HashMap<String, String>, name: &str) -> anyhow::Result<T> {
    let value = hash
        .get(name)
        .ok_or_else(|| anyhow!("field {name} is missing"))?;
    value
        .parse()
        .map_err(|_| anyhow!("field {name} holds {value:?}, not a number"))
}

pub fn decode_account(hash: &HashMap<String, String>) -> anyhow::Result<AccountRow> {
    Ok(AccountRow {
        ledger: hash
            .get("ledger")
            .cloned()
            .context("field ledger is missing")?,
        allow_overdraft: get::<u8>(hash, "allow_overdraft")? == 1,
        balance: get(hash, "balance")?,
        debits: get(hash, "debits")?,
        credits: get(hash, "credits")?,
        debits_pending: get(hash, "debits_pending")?,
        credits_pending: get(hash, "credits_pending")?,
        version: get(hash, "version")?,
    })
}

fn decode_pending(hash: &HashMap<String, String>) -> anyhow::Result<PendingRow> {
    let name = |field: &str| hash.get(field).filter(|value| !value.is_empty()).cloned();
    Ok(PendingRow {
        ledger: name("ledger").context("field ledger is missing")?,
        transfer_id: name("transfer_id").context("field transfer_id is missing")?,
        from: name("from"),
        to: name("to"),
        amount: get(hash, "amount")?,
    })
}

pub fn decode_ledger(hash: &HashMap<String, String>) -> anyhow::Result<LedgerRow> {
    Ok(LedgerRow {
        accounts: get(hash, "accounts")?,
        transfers: get(hash, "transfers")?,
        volume: get(hash, "volume")?,
        deposited: get(hash, "deposited")?,
        withdrawn: get(hash, "withdrawn")?,
        pending: get(hash, "pending")?,
        pending_amount: get(hash, "pending_amount")?,
    })
}

fn decode_day(hash: &HashMap<String, String>) -> anyhow::Result<DayRow> {
    Ok(DayRow {
        transfers: get(hash, "transfers")?,
        volume: get(hash, "volume")?,
    })
}
