"""Stripe webhooks mapped onto customer plans and resources in Supabase or PostgreSQL.

One package per layer (README, "Code map"): cli and web at the edges, then sync,
pipeline, rules, stripe, database and core, each importing only those after it; fixtures
builds test events for the CLI's `trigger` and the tests.
"""

from webhook.core import json_decode

__version__ = "0.1.0"

# Every connection in the process decodes json and jsonb columns the fast way (with the
# standard library's results): set here, so no entry point can miss it.
json_decode.use_for_database_json()
