"""Presentation primitives: figures from arrays (matplotlib, imported lazily), the HTML
document builder and CSV tables. Nothing here knows about fit results (see
:mod:`dynlearn.results.report`)."""
