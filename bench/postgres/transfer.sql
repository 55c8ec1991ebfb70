-- One transfer as "what a user would build instead": one transaction that
-- records the transfer under a unique id and moves the amount between two
-- balances; the CHECK (balance >= 0) constraint rejects an overdraft.
--
-- The two balance rows are locked in ascending account number, as a careful
-- application would, so concurrent transfers A->B and B->A cannot deadlock.
-- The transfer id is client-generated (client id + random 63-bit number), the
-- same way Tally clients choose their ids.
\set source random(0, :accounts - 1)
\set offset random(1, :accounts - 1)
\set target (:source + :offset) % :accounts
\set amount 1
\set nonce random(1, 9223372036854775806)
BEGIN;
INSERT INTO transfers (id, from_id, to_id, amount) VALUES ('pg-' || :client_id || '-' || :nonce, 'acct-' || :source, 'acct-' || :target, :amount);
\if :source < :target
UPDATE accounts SET balance = balance - :amount WHERE id = 'acct-' || :source;
UPDATE accounts SET balance = balance + :amount WHERE id = 'acct-' || :target;
\else
UPDATE accounts SET balance = balance + :amount WHERE id = 'acct-' || :target;
UPDATE accounts SET balance = balance - :amount WHERE id = 'acct-' || :source;
\endif
COMMIT;
