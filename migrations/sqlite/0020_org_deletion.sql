-- Deleting an organization: it is marked deleted at once (deleted_at), in
-- one short transaction that also destroys its data keys (the crypto-shred:
-- wrapped_key emptied), revokes its API keys and ends its sessions and
-- flows; from then on nothing of it can be read or written. Its rows are
-- then removed in small batches (by the command, or by any replica's
-- worker after a crash), so no transaction holds the write lock long.
ALTER TABLE organizations ADD COLUMN deleted_at INTEGER;
