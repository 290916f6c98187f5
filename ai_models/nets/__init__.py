"""PyTorch re-implementations of the MI2RLNet networks (architecture only, no I/O)."""
