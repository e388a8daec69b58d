"""External formats: quantbuild's ranges file, TIDL runtime options and quant-params prototxt,
onnxruntime tensor overrides, and the readers that import ranges from any of them."""
