"""Fuzz harnesses for every parser that sees outside bytes, and the runner that drives them."""
