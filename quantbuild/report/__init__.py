"""Reports across all recipes of a project."""
