"""Rendering of results: figures as PNG (matplotlib, no global pyplot state)."""

from trainlab.report.plots import learning_rate_figure, surface_figure

__all__ = ["learning_rate_figure", "surface_figure"]
