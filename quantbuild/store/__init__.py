"""Below the stages: canonical keys and file digests, deterministic atomic files, and the
content-addressed artifact store."""
