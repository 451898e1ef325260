"""Shipped srpie weights (installed as srpie_cli._weights)."""
