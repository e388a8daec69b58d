"""The operator taxonomy every layer shares: which ONNX ops carry weights, keep values on their
input's grid, fuse into their producer, or take constants. Membership only (frozensets)."""

from __future__ import annotations

# Operators whose input[1], when an initializer, is a weight quantized with the layer.
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
CONVS = frozenset({"Conv", "ConvTranspose"})
# Operators whose output values are a subset of their input values: no new grid needed.
VALUE_PRESERVING = frozenset(
    {
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "MaxPool",
        "Identity",
        "Slice",
        "Split",
        "DepthToSpace",
        "SpaceToDepth",
    }
)
# Activations TIDL fuses into the layer that produces their input, and those producers.
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu"})
FUSING_PRODUCERS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "BatchNormalization"}
)
# Elementwise operators whose constant inputs are quantized like activations.
ELEMENTWISE_CONSTANTS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Concat", "PRelu", "Max", "Min", "Sum"}
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
