"""The Gradio UI: one module per tab; talks only to the Service and imports no torch."""

from sd2_app.ui.blocks import build_ui

__all__ = ["build_ui"]
