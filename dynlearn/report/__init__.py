"""Figures (matplotlib, imported lazily) and the HTML report."""
