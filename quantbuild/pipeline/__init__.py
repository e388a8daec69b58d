"""Orchestration: the project, the build plan (stage keys, once per command), the doit loader,
status, and the commands that drive builds (diagnose, store administration)."""
