"""What an event means for one of our customers, however it arrived: which Stripe customers
are linked to it (accounts, application_links), the subscription mirror and the order of
its states, and the entitlement rule that picks the plan. SQL on the tables; no queue.

May use: webhook.stripe, webhook.core.
"""
