"""TensorRT engines from a bundle's ONNX variants: strongly typed builds, the precision census, timing caches, and
the rules that decide whether an engine may be loaded on this machine.

`tensorrt_api`, `builder` and `loader` call TensorRT, `gpu` calls cuda-bindings; `profiles`, `census`,
`compatibility`, `timing_cache` and the decisions in `bundle_engines` are plain Python, tested on any machine.
TensorRT cannot be installed where this project is built and tested, so the TensorRT calls are type-checked against
the TensorRT 10.13 stubs and have not run (see the README's TensorRT section).
Layering: engine/ reads the bundle format and the contract; it never imports torch, the model or the exporter.
"""
