"""Deprecated: the doit loader moved to quantbuild.pipeline.loader (doit.cfg written before 0.2)."""

from quantbuild.pipeline.loader import RecipeLoader

__all__ = ["RecipeLoader"]
