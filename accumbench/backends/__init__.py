"""Training loops. Each backend iterates the same accumulation plan (accumbench.accumulation)."""
