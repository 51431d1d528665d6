"""The scenarios of `python -m simulations NAME`, one module each."""
