"""Quantization parameters, the quant-proto ranges file and the QDQ model writer."""
