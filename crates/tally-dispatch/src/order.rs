//! The order a delivery carries, and its JSON on the wire.

use bytes::Bytes;
use hyper::header::HeaderValue;
use serde::Serialize;

use crate::Error;

/// One gift to deliver: the order id is the idempotency key the target deduplicates on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    order_id: String,
    user: String,
    campaign: String,
    gift_ledger: String,
    amount: u64,
}

/// The contract's JSON body; a type of its own so the wire format is not a side effect of the
/// domain type's fields.
#[derive(Serialize)]
struct Body<'a> {
    order_id: &'a str,
    user: &'a str,
    campaign: &'a str,
    gift_ledger: &'a str,
    amount: u64,
}

impl Order {
    /// An order; its id, campaign and ledger follow Tally's id rule (1 to 128 characters of
    /// `[A-Za-z0-9._:-]`), so the id is always a valid `Idempotency-Key` header.
    pub fn new(
        order_id: &str,
        user: &str,
        campaign: &str,
        gift_ledger: &str,
        amount: u64,
    ) -> Result<Order, Error> {
        for (field, value) in [
            ("order_id", order_id),
            ("campaign", campaign),
            ("gift_ledger", gift_ledger),
        ] {
            if !is_id(value) {
                return Err(Error::InvalidOrder { field });
            }
        }
        Ok(Order {
            order_id: order_id.to_owned(),
            user: user.to_owned(),
            campaign: campaign.to_owned(),
            gift_ledger: gift_ledger.to_owned(),
            amount,
        })
    }

    /// The order id, also the idempotency key.
    pub fn order_id(&self) -> &str {
        &self.order_id
    }

    /// The campaign the gift belongs to.
    pub fn campaign(&self) -> &str {
        &self.campaign
    }

    /// The request body the target receives.
    pub(crate) fn body(&self) -> Bytes {
        let body = Body {
            order_id: &self.order_id,
            user: &self.user,
            campaign: &self.campaign,
            gift_ledger: &self.gift_ledger,
            amount: self.amount,
        };
        Bytes::from(serde_json::to_vec(&body).expect("strings and integers always serialize"))
    }

    /// The `Idempotency-Key` header.
    pub(crate) fn key(&self) -> HeaderValue {
        HeaderValue::from_str(&self.order_id).expect("an id is a valid header value")
    }
}

fn is_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_contract_and_ids_are_checked() {
        let order = Order::new("o-1", "alice \"a\"", "spring", "points", 5).unwrap();
        assert_eq!(
            order.body(),
            r#"{"order_id":"o-1","user":"alice \"a\"","campaign":"spring","gift_ledger":"points","amount":5}"#
        );
        assert!(Order::new("o 1", "u", "c", "l", 1).is_err());
        assert!(Order::new("o", "u", "", "l", 1).is_err());
        assert!(Order::new(&"o".repeat(129), "u", "c", "l", 1).is_err());
    }
}
