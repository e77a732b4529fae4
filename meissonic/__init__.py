"""Meissonic: masked generative transformers for text-to-image."""
