"""Evaluation: task metrics and fidelity of the quantized model to the float model."""
