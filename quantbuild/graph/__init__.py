"""ONNX graph preparation and inspection."""
