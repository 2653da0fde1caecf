"""Intermediate neural collapse, layer by layer (Rangamani, Lindegaard, Galanti & Poggio, ICML 2023)."""
