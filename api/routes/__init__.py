"""Thin HTTP routers: parse, call a service, shape the response. No queries here."""
