"""From a stored event to its effect: the inbox, the drain (claim a batch, apply it, fall
back one by one), the handlers per event type, the batch engines for subscriptions and
renewals, replay, reconcile, and the event log. One event's path: inbox.receive, then
drain_worker, drain.drain_batch, then handlers, subscription_batch or renewal_batch, and
subscription_batch.record_outcomes (inline and replay: inbox.record).

May use: webhook.rules, webhook.stripe, webhook.database, webhook.core.
"""
