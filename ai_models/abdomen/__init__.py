"""MI2RLNet-derived and baseline models: abdomen."""
