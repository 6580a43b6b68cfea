"""State fetched from Stripe's API when events are not enough: `sync` of subscriptions and
customers, the `sync --events` catch-up (applied through the drain's engine), and the run
records that make both resumable.

May use: webhook.pipeline, webhook.rules, webhook.stripe, webhook.database, webhook.core.
"""
