"""Shared building blocks on top of models: losses (one registry), heads (fixed ETF, ETF projector),
regularisers (KoLeo)."""
