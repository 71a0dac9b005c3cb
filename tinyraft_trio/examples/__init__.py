"""Example state machines shipped with the library (the CLI's default app lives here)."""
