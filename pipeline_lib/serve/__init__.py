"""Serving: the loaded models and the FastAPI app."""
