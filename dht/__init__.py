"""Freehold dht."""
