"""Claim records and history, inbound NATS messages, the listener, reconciliation."""
