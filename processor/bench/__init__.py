"""Benchmarks behind ``drishtiksha bench`` (results in docs/benchmarks.md): decode, the queue,
the detectors and ONNX agreement (``core``), the HTTP API (``api``), the desk (``desk``), face
finding (``faces``), start-up (``startup``), and the GPU run with what it carries to a host
without network (``gpu``, ``gpu_bundle``)."""
