"""Trained draft heads shipped for koala's default model (SmolLM2-135M-Instruct), as package data.

One folder per head (``model.safetensors`` + ``koala.json``); ``default.json`` names the head
``koala generate`` uses by default. Found through :mod:`koala_core.shipped`; never imported for code.
"""
