"""The contract between export, bundle, engines and runtimes, written down once (docs/design.md, "The three graphs").

Graph names, their tensors (names, dtypes, symbolic shapes), the columns of the per-step coefficient table, the
precisions a bundle may hold, the TensorRT majors the toolkit targets and the input normalisation. Torch-free and
NumPy-only, so every layer (export, bundle, runtime, a TensorRT build box) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

RESTORE_STEP = "restore_step"
VCG = "vcg"
VDA = "vda"
GRAPH_NAMES = (RESTORE_STEP, VCG, VDA)
BRANCH_GRAPHS = (VCG, VDA)

# Tensor names. `x` (the distorted image, or its crop) is an input of all three graphs.
X = "x"
Y = "y"  # restore_step: the current sample y_t
GAMMA = "gamma"  # restore_step: per-sample noise level
COEF = "coef"  # restore_step: per-sample step coefficients (COEF_NAMES)
Z = "z"  # restore_step: this step's noise, one image broadcast over the batch
Y0 = "y0"  # the restored image (last step)
Y_T1 = "y_t1"  # snapshots at the capture steps, t1 before t2 in the loop (capture order)
Y_T2 = "y_t2"

RESTORE_INPUTS = (X, Y, GAMMA, COEF, Z)
RESTORE_OUTPUT = "y_next"
SNAPSHOT_INPUTS = (Y0, Y_T1, Y_T2)  # what the restore loop hands to the branches besides x, in this order
BRANCH_INPUTS = (X, *SNAPSHOT_INPUTS)
BRANCH_OUTPUT = "score"
# Inputs with one value per call rather than per image: their batch axis is 1 (the noise bank row of the step).
BROADCAST_INPUTS = (Z,)

# Column order of the per-step coefficient table (the `coef` input of restore_step; see schedule.step_tables).
COEF_NAMES = ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1",
              "posterior_mean_coef2", "posterior_std")
COEF_WIDTH = len(COEF_NAMES)

# ONNX variants a bundle may hold. fp16 and int8 are laid out for TensorRT (int8: explicit Q/DQ, fp16 elsewhere);
# int8-cpu is the same calibration quantised the way ONNX Runtime's CPU kernels run fastest (QDQ, uint8 activations),
# picked by the CPU backend in place of int8 when present.
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")
# TensorRT major versions whose ONNX parser the export is linted against and engines are built for.
TRT_MAJORS = (10, 11)

DimValue = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, ONNX-style dtype name, and shape (ints are fixed, strings are symbolic)."""

    name: str
    dtype: str
    shape: tuple[DimValue, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def matches(self, shape: tuple[int, ...], bindings: dict[str, int] | None = None) -> bool:
        """Whether a concrete shape fits this spec; `bindings` collects (and checks) the symbolic values."""
        seen = {} if bindings is None else bindings
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape, strict=True):
            if isinstance(want, int):
                if want != got:
                    return False
            elif seen.setdefault(want, got) != got:
                return False
        return True


class GraphIO:
    """The tensor names of anything that holds a graph's `inputs` and `outputs` (the contract's GraphSpec, a
    manifest's graph entry)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class GraphSpec(GraphIO):
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}


GRAPH_INPUTS: dict[str, tuple[str, ...]] = {RESTORE_STEP: RESTORE_INPUTS, VCG: BRANCH_INPUTS, VDA: BRANCH_INPUTS}
GRAPH_OUTPUTS: dict[str, tuple[str, ...]] = {RESTORE_STEP: (RESTORE_OUTPUT,), VCG: (BRANCH_OUTPUT,),
                                             VDA: (BRANCH_OUTPUT,)}


def check_graph(graph: str) -> str:
    if graph not in GRAPH_NAMES:
        raise ConfigError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPH_NAMES)}")
    return graph


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def graph_spec(graph: str, crop_size: int) -> GraphSpec:
    """The contract of one graph. Symbolic dims: `batch` everywhere, `height`/`width` for restore_step (multiples of
    the U-Net's size multiple); the branch graphs take crops of the fixed size `crop_size`."""
    f32 = "float32"
    if check_graph(graph) == RESTORE_STEP:
        image = ("batch", 3, "height", "width")
        return GraphSpec(
            name=graph,
            inputs=(
                TensorSpec(X, f32, image),
                TensorSpec(Y, f32, image),
                TensorSpec(GAMMA, f32, ("batch",)),
                TensorSpec(COEF, f32, ("batch", COEF_WIDTH)),
                # One noise image per step, broadcast over the batch: every image of a resolution shares the bank.
                TensorSpec(Z, f32, (1, 3, "height", "width")),
            ),
            outputs=(TensorSpec(RESTORE_OUTPUT, f32, image),),
        )
    crop = ("batch", 3, crop_size, crop_size)
    return GraphSpec(name=graph, inputs=tuple(TensorSpec(n, f32, crop) for n in BRANCH_INPUTS),
                     outputs=(TensorSpec(BRANCH_OUTPUT, f32, ("batch",)),))


def input_shapes(graph: str, crop_size: int, batch: int, height: int | None = None,
                 width: int | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shape of each input of `graph` (in the contract's input order) for a batch of `batch` images:
    graph_spec's symbolic dims bound to `batch`, `height` and `width` (restore_step; default: the crop size). The
    branch graphs take crops of `crop_size`; broadcast inputs (BROADCAST_INPUTS) keep their batch axis of 1."""
    dims: dict[str, int] = {"batch": batch, "height": crop_size if height is None else height,
                            "width": crop_size if width is None else width}
    return {t.name: tuple(d if isinstance(d, int) else dims[d] for d in t.shape)
            for t in graph_spec(graph, crop_size).inputs}


# --- input normalisation -------------------------------------------------------------------------------------------
# The authors' transform, evaluated in float32 exactly in this order: x = (float32(v) / 255 - 0.5) / 0.5.
# A division, a subtraction and a division by a power of two: no step can be fused (FMA) by a compiler, so any
# IEEE-754 implementation reproduces it bit for bit. The manifest records these constants and this formula.
NORM_DIVISOR = 255.0
NORM_MEAN = 0.5
NORM_STD = 0.5
NORM_FORMULA = "x = (float32(v) / 255 - 0.5) / 0.5, in float32, for uint8 RGB v; laid out (3, H, W)"


def normalise_uint8(values: np.ndarray) -> np.ndarray:
    """uint8 values -> float32 model inputs, elementwise, by NORM_FORMULA (same shape)."""
    f32 = np.float32
    x: np.ndarray = (values.astype(f32) / f32(NORM_DIVISOR) - f32(NORM_MEAN)) / f32(NORM_STD)
    return x
