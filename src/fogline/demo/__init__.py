"""demo: see the README's package map."""
