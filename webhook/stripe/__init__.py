"""Stripe's side of things: verifying signatures, reading event payloads of every API
version into typed values, the client for Stripe's HTTP API, and reading one
subscription back to break a tie. Nothing here touches the database.

May use: webhook.core.
"""
