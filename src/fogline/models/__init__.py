"""models: see the README's package map."""
