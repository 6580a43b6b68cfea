"""Stripe webhooks mapped onto customer plans and resources in Supabase or PostgreSQL."""

from webhook.core import json_decode

__version__ = "0.1.0"

# Every connection in the process decodes json and jsonb columns the fast way (with the
# standard library's results): set here, so no entry point can miss it.
json_decode.use_for_database_json()
