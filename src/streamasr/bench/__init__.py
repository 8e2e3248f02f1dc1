"""Benchmarks: speed (`streamasr bench speed`) and fidelity of quantized models (`streamasr bench fidelity`)."""
