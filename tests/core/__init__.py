"""Tier 1: plain synchronous tests of the pure Raft core (DESIGN.md §7)."""
