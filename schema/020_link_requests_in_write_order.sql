-- The application's writes to `customer.stripe_customer_id` are dated by the moment each
-- was made, not by the statement that made them.
--
-- A link request took `statement_timestamp()`, which is one moment for everything one
-- top-level statement does: a DO block, a function called over the API, or a client's
-- multi-statement string that clears the column and then sets it again gave the release
-- and the link the same moment, and a release wins over a link of its moment (so that a
-- Stripe event of the same second settles alike in either order). The application's
-- last write was then undone. `clock_timestamp()` dates each write when it happens, so
-- two writes in a row are two moments in their true order.
--
-- Changing a default rewrites nothing; it takes the table's lock for a moment and waits
-- at most 5 s for the transactions using it (the link-request pollers), then fails,
-- changes nothing, and can be run again.
set local lock_timeout = '5s';

alter table webhook_private.link_requests alter column requested_at set default clock_timestamp();
