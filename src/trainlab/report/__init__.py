"""Rendering of results: figures as PNG (matplotlib, no global pyplot state) and the demo's
HTML / Markdown / JSON report."""

from trainlab.report.plots import learning_rate_figure, save, surface_figure

__all__ = ["learning_rate_figure", "save", "surface_figure"]
