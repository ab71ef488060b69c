"""FP16 and INT8 variants of a bundle's graphs (build side): make them from a calibration set (`quantize`), measure
them (`evaluate`), pick a plan (`search`) and write them into a bundle (`variants`). Plans themselves are parsed by
the bottom module `diffv2iqa_trt.precision_plan`, which runtimes import without any of this."""
