"""Datasets (image folders, .npy/.npz tensors) and edgeai-benchmark style preprocessing."""
