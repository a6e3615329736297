"""netproxy: see the README's package map."""
