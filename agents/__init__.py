"""Faust wiring of the journey engine: decode, look up state, call the engine, send."""
