"""Multi-label neural collapse with the pick-all-label loss (Li, Li, Wang & Qu, ICML 2024)."""
