"""Deprecated alias kept for projects whose doit.cfg predates 0.2: their `[LOADER]` line names
`quantbuild.build.loader:RecipeLoader`. New projects use `quantbuild.pipeline.loader`."""
