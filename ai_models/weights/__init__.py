"""Weight loading: Keras HDF5 files and torch checkpoints onto PyTorch modules."""
