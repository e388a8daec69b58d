"""TIDL mixed precision: which layers run in 16 bits, and what that costs on the target."""
