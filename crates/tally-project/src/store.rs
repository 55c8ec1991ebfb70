//! The Redis read store: its key layout, the rows' encoding, leases, and the fenced commit.
//!
//! Every write of a member goes through one Lua script ([`RedisStore::commit`]) that first
//! checks, on Redis's own clock, that the member still holds the lease of every partition it
//! writes, with the token it was given, and only then writes the rows and the partitions'
//! checkpoints. A member that was paused or cut off past its lease finds its token gone and
//! writes nothing: that is the fencing. The checkpoint is written last, so a script stopped
//! half-way (which Redis does not roll back) never claims rows it did not write.
//!
//! Key layout (every key starts with the prefix, `tally:` by default); numbers are decimal:
//!
//! | key | type | content |
//! |-----|------|---------|
//! | `account:{id}` | hash | `ledger`, `balance`, `debits`, `credits`, `debits_pending`, `credits_pending`, `allow_overdraft` (0/1), `version` |
//! | `history:{id}` | sorted set | one JSON entry per event (as `GET /v1/accounts/{id}/history`), scored by position |
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

/// History entries per `ZADD` in a commit; keeps each command's arguments bounded.
const HISTORY_ENTRIES_PER_COMMAND: usize = 500;

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
        format!("{}account:{id}", self.prefix)
    }

    pub fn history(&self, id: &str) -> String {
        format!("{}history:{id}", self.prefix)
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

/// ARGV: member, lease ms, event timestamp, fence count, then per fence: partition key, token,
/// new position; then the command count and per command its argument count and arguments.
/// Returns {1, 0} when written, {0, i} when fence i failed (nothing written).
const COMMIT: &str = r"
local now = now_ms()
local member, lease, timestamp = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local fences = tonumber(ARGV[4])
local i = 5
for f = 1, fences do
  local s = redis.call('HMGET', ARGV[i], 'owner', 'token', 'expires_ms')
  if s[1] ~= member or s[2] ~= ARGV[i + 1] or tonumber(s[3] or '0') <= now then
    return {0, f}
  end
  i = i + 3
end
local commands = tonumber(ARGV[i])
local c = i + 1
for _ = 1, commands do
  local n = tonumber(ARGV[c])
  redis.call(unpack(ARGV, c + 1, c + n))
  c = c + 1 + n
end
i = 5
for _ = 1, fences do
  redis.call('HSET', ARGV[i], 'position', ARGV[i + 2], 'expires_ms', now + lease,
    'event_timestamp', timestamp, 'applied_ms', now)
  i = i + 3
end
return {1, 0}
";

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

pub struct RedisStore {
    connection: MultiplexedConnection,
    pub keys: Keys,
    acquire: Script,
    renew: Script,
    release: Script,
    heartbeat: Script,
    commit: Script,
}

impl RedisStore {
    pub async fn connect(url: &str, keys: Keys) -> anyhow::Result<RedisStore> {
        let client = redis::Client::open(url)
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
            commit: script(COMMIT),
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

    /// Writes `changes` (with the values in `rows`) and moves every fenced partition's
    /// checkpoint to its new position, all in one script, if and only if `member` still holds
    /// each lease with its token.
    pub async fn commit(
        &mut self,
        member: &str,
        lease: Duration,
        fences: &BTreeMap<u32, (Lease, u64)>,
        event_timestamp: &str,
        changes: &Changes,
        rows: &Rows,
    ) -> anyhow::Result<Committed> {
        let commands = self.commands(changes, rows)?;
        let mut invocation = self.commit.prepare_invoke();
        invocation
            .arg(member)
            .arg(lease.as_millis() as u64)
            .arg(event_timestamp)
            .arg(fences.len());
        let order: Vec<u32> = fences.keys().copied().collect();
        for (partition, (held, position)) in fences {
            invocation
                .arg(self.keys.partition(*partition))
                .arg(held.token.to_string())
                .arg(position.to_string());
        }
        invocation.arg(commands.len());
        for command in &commands {
            invocation.arg(command.len());
            for argument in command {
                invocation.arg(argument.as_str());
            }
        }
        let (written, failed): (i64, usize) = invocation.invoke_async(&mut self.connection).await?;
        if written == 1 {
            Ok(Committed::Written)
        } else {
            let partition = order.get(failed.wrapping_sub(1)).ok_or_else(|| {
                anyhow!("the commit script named fence {failed} of {}", order.len())
            })?;
            Ok(Committed::Fenced(*partition))
        }
    }

    fn commands(&self, changes: &Changes, rows: &Rows) -> anyhow::Result<Vec<Vec<String>>> {
        let mut commands = Vec::new();
        let keys = &self.keys;
        for account in &changes.accounts {
            let row = rows.accounts.get(account).and_then(Option::as_ref);
            let row = row.ok_or_else(|| anyhow!("changed account {account} has no row"))?;
            let mut command = vec!["HSET".to_owned(), keys.account(account)];
            push_fields(&mut command, &encode_account(row));
            commands.push(command);
        }
        for (account, entries) in &changes.history {
            for chunk in entries.chunks(HISTORY_ENTRIES_PER_COMMAND) {
                let mut command = vec!["ZADD".to_owned(), keys.history(account)];
                for (position, entry) in chunk {
                    command.push(position.to_string());
                    command.push(entry.clone());
                }
                commands.push(command);
            }
        }
        for (position, row) in &changes.pendings {
            match row {
                Some(row) => {
                    let mut command = vec!["HSET".to_owned(), keys.pending(*position)];
                    push_fields(&mut command, &encode_pending(row));
                    commands.push(command);
                }
                None => commands.push(vec!["DEL".to_owned(), keys.pending(*position)]),
            }
        }
        for ledger in &changes.ledgers {
            let row = rows.ledgers.get(ledger).and_then(Option::as_ref);
            let row = row.ok_or_else(|| anyhow!("changed ledger {ledger} has no row"))?;
            let mut command = vec!["HSET".to_owned(), keys.ledger(ledger)];
            push_fields(&mut command, &encode_ledger(row));
            commands.push(command);
        }
        for (ledger, day) in &changes.days {
            let key = (ledger.clone(), day.clone());
            let row = rows.days.get(&key).and_then(Option::as_ref);
            let row = row.ok_or_else(|| anyhow!("changed day {day} of {ledger} has no row"))?;
            let mut command = vec!["HSET".to_owned(), keys.daily(ledger, day)];
            push_fields(
                &mut command,
                &[
                    ("transfers", row.transfers.to_string()),
                    ("volume", row.volume.to_string()),
                ],
            );
            commands.push(command);
            let score: String = day.chars().filter(char::is_ascii_digit).collect();
            commands.push(vec![
                "ZADD".to_owned(),
                keys.days(ledger),
                score,
                day.clone(),
            ]);
        }
        Ok(commands)
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

fn push_fields(command: &mut Vec<String>, fields: &[(&str, String)]) {
    for (name, value) in fields {
        command.push((*name).to_owned());
        command.push(value.clone());
    }
}

fn encode_account(row: &AccountRow) -> Vec<(&'static str, String)> {
    vec![
        ("ledger", row.ledger.clone()),
        ("balance", row.balance.to_string()),
        ("debits", row.debits.to_string()),
        ("credits", row.credits.to_string()),
        ("debits_pending", row.debits_pending.to_string()),
        ("credits_pending", row.credits_pending.to_string()),
        ("allow_overdraft", u8::from(row.allow_overdraft).to_string()),
        ("version", row.version.to_string()),
    ]
}

fn encode_pending(row: &PendingRow) -> Vec<(&'static str, String)> {
    vec![
        ("ledger", row.ledger.clone()),
        ("transfer_id", row.transfer_id.clone()),
        ("from", row.from.clone().unwrap_or_default()),
        ("to", row.to.clone().unwrap_or_default()),
        ("amount", row.amount.to_string()),
    ]
}

fn encode_ledger(row: &LedgerRow) -> Vec<(&'static str, String)> {
    vec![
        ("accounts", row.accounts.to_string()),
        ("transfers", row.transfers.to_string()),
        ("volume", row.volume.to_string()),
        ("deposited", row.deposited.to_string()),
        ("withdrawn", row.withdrawn.to_string()),
        ("pending", row.pending.to_string()),
        ("pending_amount", row.pending_amount.to_string()),
    ]
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
