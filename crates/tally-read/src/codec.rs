//! The stored rows and their compact binary encoding.
//!
//! Rows are LEB128 varints, little-endian `i128` balances and `u128` sums, and length-prefixed
//! strings, like the event encoding of `tally-core`. Decoding never trusts its input: a damaged
//! file yields an error, never a panic. The layout is versioned as a whole by
//! [`crate::limits::STORE_FORMAT_VERSION`].

/// An account as the projection knows it: enough to render transfers and compute balances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AccountRow {
    /// The client's id; `None` for a ledger's external account.
    pub id: Option<String>,
    /// The ledger code.
    pub ledger: String,
    /// Posted credits minus posted debits.
    pub balance: i128,
}

/// A transfer (any kind but a rejection), with the current state of a pending one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TransferRow {
    pub kind: EntryKind,
    pub debit: u32,
    pub credit: u32,
    pub amount: u64,
    pub position: u64,
    pub timestamp_ns: u64,
    /// For a pending transfer with a timeout; 0 means none.
    pub expires_at_ns: u64,
    pub status: Status,
    /// For a post or a void: the pending transfer's id.
    pub pending_id: Option<String>,
    /// For a posted pending transfer: the amount the post moved.
    pub posted_amount: Option<u64>,
    /// For a resolved pending transfer: the id of the post or void (none for an expiry).
    pub resolved_by: Option<String>,
}

/// One line of an account's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HistoryRow {
    pub transfer_id: String,
    pub kind: EntryKind,
    pub side: Side,
    pub amount: u64,
    pub balance_after: i128,
    pub timestamp_ns: u64,
}

/// A ledger's figures (see [`crate::LedgerTotals`] for what each counts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TotalsRow {
    pub accounts: u64,
    pub transfers: u64,
    pub volume: u128,
    pub deposited: u128,
    pub withdrawn: u128,
    pub pending: u64,
    pub pending_amount: u128,
}

/// A ledger's figures of one UTC day: what posted value, counted as in [`TotalsRow`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DayRow {
    pub transfers: u64,
    pub volume: u128,
}

/// What an event did, as stored; the transfer kinds of `tally-core` plus expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Deposit = 1,
    Withdrawal = 2,
    Transfer = 3,
    Pending = 4,
    Post = 5,
    Void = 6,
    Expire = 7,
}

/// The current status of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Posted = 1,
    Pending = 2,
    Voided = 3,
    Expired = 4,
}

/// Which side of a transfer an account is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Debit = 1,
    Credit = 2,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Deposit => "deposit",
            EntryKind::Withdrawal => "withdrawal",
            EntryKind::Transfer => "transfer",
            EntryKind::Pending => "pending",
            EntryKind::Post => "post",
            EntryKind::Void => "void",
            EntryKind::Expire => "expire",
        }
    }

    fn from_byte(byte: u8) -> Option<EntryKind> {
        Some(match byte {
            1 => EntryKind::Deposit,
            2 => EntryKind::Withdrawal,
            3 => EntryKind::Transfer,
            4 => EntryKind::Pending,
            5 => EntryKind::Post,
            6 => EntryKind::Void,
            7 => EntryKind::Expire,
            _ => return None,
        })
    }
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Posted => "posted",
            Status::Pending => "pending",
            Status::Voided => "voided",
            Status::Expired => "expired",
        }
    }

    fn from_byte(byte: u8) -> Option<Status> {
        Some(match byte {
            1 => Status::Posted,
            2 => Status::Pending,
            3 => Status::Voided,
            4 => Status::Expired,
            _ => return None,
        })
    }
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Debit => "debit",
            Side::Credit => "credit",
        }
    }

    fn from_byte(byte: u8) -> Option<Side> {
        match byte {
            1 => Some(Side::Debit),
            2 => Some(Side::Credit),
            _ => None,
        }
    }
}

impl AccountRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        put_opt_str(&mut out, self.id.as_deref());
        put_str(&mut out, &self.ledger);
        out.extend_from_slice(&self.balance.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<AccountRow, &'static str> {
        let mut reader = Reader { bytes, offset: 0 };
        let row = AccountRow {
            id: reader.opt_str()?,
            ledger: reader.str()?,
            balance: reader.i128()?,
        };
        reader.finish()?;
        Ok(row)
    }
}

impl TransferRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(self.kind as u8);
        out.push(self.status as u8);
        put_varint(&mut out, u64::from(self.debit));
        put_varint(&mut out, u64::from(self.credit));
        put_varint(&mut out, self.amount);
        put_varint(&mut out, self.position);
        put_varint(&mut out, self.timestamp_ns);
        put_varint(&mut out, self.expires_at_ns);
        put_opt_str(&mut out, self.pending_id.as_deref());
        match self.posted_amount {
            None => out.push(0),
            Some(amount) => {
                out.push(1);
                put_varint(&mut out, amount);
            }
        }
        put_opt_str(&mut out, self.resolved_by.as_deref());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<TransferRow, &'static str> {
        let mut reader = Reader { bytes, offset: 0 };
        let kind = EntryKind::from_byte(reader.byte()?).ok_or("unknown transfer kind")?;
        let status = Status::from_byte(reader.byte()?).ok_or("unknown transfer status")?;
        let row = TransferRow {
            kind,
            status,
            debit: reader.u32()?,
            credit: reader.u32()?,
            amount: reader.varint()?,
            position: reader.varint()?,
            timestamp_ns: reader.varint()?,
            expires_at_ns: reader.varint()?,
            pending_id: reader.opt_str()?,
            posted_amount: match reader.byte()? {
                0 => None,
                1 => Some(reader.varint()?),
                _ => return Err("posted amount flag is neither 0 nor 1"),
            },
            resolved_by: reader.opt_str()?,
        };
        reader.finish()?;
        Ok(row)
    }
}

impl HistoryRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        put_str(&mut out, &self.transfer_id);
        out.push(self.kind as u8);
        out.push(self.side as u8);
        put_varint(&mut out, self.amount);
        out.extend_from_slice(&self.balance_after.to_le_bytes());
        put_varint(&mut out, self.timestamp_ns);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<HistoryRow, &'static str> {
        let mut reader = Reader { bytes, offset: 0 };
        let row = HistoryRow {
            transfer_id: reader.str()?,
            kind: EntryKind::from_byte(reader.byte()?).ok_or("unknown entry kind")?,
            side: Side::from_byte(reader.byte()?).ok_or("unknown side")?,
            amount: reader.varint()?,
            balance_after: reader.i128()?,
            timestamp_ns: reader.varint()?,
        };
        reader.finish()?;
        Ok(row)
    }
}

impl TotalsRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        put_varint(&mut out, self.accounts);
        put_varint(&mut out, self.transfers);
        out.extend_from_slice(&self.volume.to_le_bytes());
        out.extend_from_slice(&self.deposited.to_le_bytes());
        out.extend_from_slice(&self.withdrawn.to_le_bytes());
        put_varint(&mut out, self.pending);
        out.extend_from_slice(&self.pending_amount.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<TotalsRow, &'static str> {
        let mut reader = Reader { bytes, offset: 0 };
        let row = TotalsRow {
            accounts: reader.varint()?,
            transfers: reader.varint()?,
            volume: reader.u128()?,
            deposited: reader.u128()?,
            withdrawn: reader.u128()?,
            pending: reader.varint()?,
            pending_amount: reader.u128()?,
        };
        reader.finish()?;
        Ok(row)
    }
}

impl DayRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        put_varint(&mut out, self.transfers);
        out.extend_from_slice(&self.volume.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<DayRow, &'static str> {
        let mut reader = Reader { bytes, offset: 0 };
        let row = DayRow {
            transfers: reader.varint()?,
            volume: reader.u128()?,
        };
        reader.finish()?;
        Ok(row)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Ids and ledger codes are at most 128 bytes (tally-core validates them).
    assert!(text.len() <= usize::from(u8::MAX));
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_str(out, text);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let byte = *self.bytes.get(self.offset).ok_or("unexpected end of row")?;
        self.offset += 1;
        Ok(byte)
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], &'static str> {
        let end = self
            .offset
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("unexpected end of row")?;
        let bytes: &'a [u8] = self.bytes;
        let slice = &bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("varint overflows u64");
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes")
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        u32::try_from(self.varint()?).map_err(|_| "account index overflows u32")
    }

    fn i128(&mut self) -> Result<i128, &'static str> {
        Ok(i128::from_le_bytes(
            self.take(16)?.try_into().expect("took 16 bytes"),
        ))
    }

    fn u128(&mut self) -> Result<u128, &'static str> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("took 16 bytes"),
        ))
    }

    fn str(&mut self) -> Result<String, &'static str> {
        let length = usize::from(self.byte()?);
        let bytes = self.take(length)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "string is not UTF-8")
    }

    fn opt_str(&mut self) -> Result<Option<String>, &'static str> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            _ => Err("option flag is neither 0 nor 1"),
        }
    }

    fn finish(&self) -> Result<(), &'static str> {
        if self.offset == self.bytes.len() {
            Ok(())
        } else {
            Err("bytes left after the row")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> TransferRow {
        TransferRow {
            kind: EntryKind::Pending,
            debit: u32::MAX,
            credit: 3,
            amount: u64::MAX,
            position: 1 << 55,
            timestamp_ns: 17,
            expires_at_ns: 99,
            status: Status::Posted,
            pending_id: None,
            posted_amount: Some(5),
            resolved_by: Some("p-1".into()),
        }
    }

    #[test]
    fn rows_round_trip() {
        let account = AccountRow {
            id: Some("alice".into()),
            ledger: "USD".into(),
            balance: i128::MIN,
        };
        assert_eq!(AccountRow::decode(&account.encode()).unwrap(), account);
        let external = AccountRow {
            id: None,
            ledger: "EUR".into(),
            balance: -1,
        };
        assert_eq!(AccountRow::decode(&external.encode()).unwrap(), external);
        assert_eq!(
            TransferRow::decode(&transfer().encode()).unwrap(),
            transfer()
        );
        let history = HistoryRow {
            transfer_id: "t".into(),
            kind: EntryKind::Expire,
            side: Side::Credit,
            amount: 1,
            balance_after: i128::MAX,
            timestamp_ns: u64::MAX,
        };
        assert_eq!(HistoryRow::decode(&history.encode()).unwrap(), history);
        assert_eq!(TotalsRow::decode(&totals().encode()).unwrap(), totals());
        let default = TotalsRow::default();
        assert_eq!(TotalsRow::decode(&default.encode()).unwrap(), default);
        let day = DayRow {
            transfers: u64::MAX,
            volume: u128::MAX - 1,
        };
        assert_eq!(DayRow::decode(&day.encode()).unwrap(), day);
    }

    fn totals() -> TotalsRow {
        TotalsRow {
            accounts: 3,
            transfers: u64::MAX,
            volume: u128::MAX,
            deposited: 1 << 70,
            withdrawn: 5,
            pending: 1 << 40,
            pending_amount: 7,
        }
    }

    #[test]
    fn truncated_and_padded_rows_are_refused() {
        let bytes = transfer().encode();
        for cut in 0..bytes.len() {
            assert!(
                TransferRow::decode(&bytes[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(TransferRow::decode(&padded).is_err());

        let bytes = totals().encode();
        for cut in 0..bytes.len() {
            assert!(
                TotalsRow::decode(&bytes[..cut]).is_err(),
                "totals cut at {cut}"
            );
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(TotalsRow::decode(&padded).is_err());
        let bytes = DayRow::default().encode();
        for cut in 0..bytes.len() {
            assert!(DayRow::decode(&bytes[..cut]).is_err(), "day cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(DayRow::decode(&padded).is_err());
    }
}
