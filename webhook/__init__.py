"""Stripe webhooks mapped onto customer plans and resources in Supabase or PostgreSQL."""

__version__ = "0.1.0"
