"""torch -> ONNX for the three graphs, ONNX validation against torch, and a TensorRT compatibility lint.

`graphs` holds the I/O contract and the modules that export; `onnx_export` writes checked ONNX files; `validate`
compares ONNX Runtime and the ONNX reference evaluator with torch; `trt_lint` needs only onnx (no torch), so it
also runs in a TensorRT environment. These four import neither the runtime nor the CLI.
"""
