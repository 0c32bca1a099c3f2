"""What a Triton model can serve, read from its config (the server's
`ModelConfig` proto). The triton engine serves two shapes and refuses the
rest at start, naming what it found:

- an embedding model: one BYTES text input -> one FP32 vector output;
- a decoupled text-generation model: a BYTES `text_input` -> a streamed
  BYTES `text_output`, the convention of Triton's vLLM backend, with its
  optional inputs (`stream`, `sampling_parameters`,
  `exclude_input_in_output`, `return_*`) and outputs (`finish_reason`,
  `num_input_tokens`, `num_output_tokens`) used where the model has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from headrace.runtime.errors import FailedPrecondition

# Optional inputs of the vLLM backend convention, and the flags that ask
# for its optional outputs.
STREAM = "stream"
SAMPLING_PARAMETERS = "sampling_parameters"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
REPORTS = {
    "return_finish_reason": "finish_reason",
    "return_num_input_tokens": "num_input_tokens",
    "return_num_output_tokens": "num_output_tokens",
}
_KNOWN_GENERATION_INPUTS = {STREAM: "BOOL", SAMPLING_PARAMETERS: "BYTES", EXCLUDE_INPUT_IN_OUTPUT: "BOOL"} | {
    flag: "BOOL" for flag in REPORTS
}

SUPPORTED = (
    "The triton engine serves an embedding model (one BYTES text input -> one FP32 vector output) "
    "or a decoupled text-generation model (BYTES text_input -> streamed BYTES text_output)"
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    # Triton's wire name: "BYTES", "FP32", "BOOL", ...
    datatype: str
    # Without the batch dimension; -1 is variable.
    dims: tuple[int, ...]
    optional: bool = False

    def __str__(self) -> str:
        return f"{self.name} {self.datatype}{list(self.dims)}{' optional' if self.optional else ''}"


@dataclass(frozen=True)
class ModelShape:
    """A model's interface as its config states it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # 0: the model takes no batch dimension.
    max_batch_size: int
    decoupled: bool

    def __str__(self) -> str:
        inputs = ", ".join(map(str, self.inputs)) or "none"
        outputs = ", ".join(map(str, self.outputs)) or "none"
        return f"decoupled={self.decoupled}, max_batch_size={self.max_batch_size}, inputs: {inputs}; outputs: {outputs}"

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


@dataclass(frozen=True)
class EmbeddingPlan:
    shape: ModelShape
    text_input: TensorSpec
    vector_output: TensorSpec

    @property
    def texts_per_call(self) -> int:
        """Most texts one infer call can carry."""
        if self.shape.max_batch_size > 0:
            return self.shape.max_batch_size
        # No batch dimension: a variable first dim takes a list of texts.
        return 0 if self.text_input.dims == (-1,) else 1


@dataclass(frozen=True)
class GenerationPlan:
    shape: ModelShape
    text_input: TensorSpec
    text_output: TensorSpec
    # Optional inputs the model has, by name.
    extras: frozenset[str]
    # Optional outputs the model reports (finish_reason, token counts).
    reports: frozenset[str]


ModelPlan = EmbeddingPlan | GenerationPlan


def shape_from_config(config: Any) -> ModelShape:
    """Read a tritonclient `model_config_pb2.ModelConfig`."""
    from tritonclient.grpc import model_config_pb2

    def spec(tensor: Any) -> TensorSpec:
        type_name = str(model_config_pb2.DataType.Name(tensor.data_type)).removeprefix("TYPE_")
        return TensorSpec(
            name=str(tensor.name),
            datatype="BYTES" if type_name == "STRING" else type_name,
            dims=tuple(int(d) for d in tensor.dims),
            optional=bool(getattr(tensor, "optional", False)),
        )

    return ModelShape(
        name=str(config.name),
        inputs=tuple(spec(t) for t in config.input),
        outputs=tuple(spec(t) for t in config.output),
        max_batch_size=int(config.max_batch_size),
        decoupled=bool(config.model_transaction_policy.decoupled),
    )


def plan_model(shape: ModelShape, *, text_input: str = "", text_output: str = "") -> ModelPlan:
    """Decide what the model serves, or raise FailedPrecondition naming
    what was found. text_input / text_output force names ("" finds them)."""
    if shape.decoupled:
        return _plan_generation(shape, text_input, text_output)
    return _plan_embedding(shape, text_input, text_output)


def _plan_generation(shape: ModelShape, text_input: str, text_output: str) -> GenerationPlan:
    source = _pick(shape, shape.inputs, "input", text_input or "text_input", "BYTES", explicit=bool(text_input))
    sink = _pick(shape, shape.outputs, "output", text_output or "text_output", "BYTES", explicit=bool(text_output))
    extras: set[str] = set()
    for spec in shape.inputs:
        if spec is source:
            continue
        wanted = _KNOWN_GENERATION_INPUTS.get(spec.name)
        if wanted is not None and spec.datatype == wanted:
            extras.add(spec.name)
        elif not spec.optional:
            _refuse(shape, f"it needs input {spec} that the engine cannot fill")
    reports = {output for output in REPORTS.values() if shape.output(output) is not None}
    return GenerationPlan(shape, source, sink, frozenset(extras), frozenset(reports))


def _plan_embedding(shape: ModelShape, text_input: str, text_output: str) -> EmbeddingPlan:
    if any(spec.datatype == "BYTES" for spec in shape.outputs) and not text_output:
        _refuse(shape, "a text output needs a decoupled (streaming) model")
    source = _pick(shape, shape.inputs, "input", text_input, "BYTES", explicit=bool(text_input))
    sink = _pick(shape, shape.outputs, "output", text_output, "FP32", explicit=bool(text_output))
    for spec in shape.inputs:
        if spec is not source and not spec.optional:
            _refuse(shape, f"it needs input {spec} that the engine cannot fill")
    dims = source.dims
    if shape.max_batch_size > 0 and dims not in ((1,), (-1,)):
        _refuse(shape, f"text input {source} must hold one text per batch row (dims [1])")
    if shape.max_batch_size == 0 and dims not in ((1,), (-1,)):
        _refuse(shape, f"text input {source} must be a list of texts (dims [-1] or [1])")
    vector_dims = sink.dims if shape.max_batch_size > 0 else sink.dims[1:]
    if len(vector_dims) != 1:
        _refuse(shape, f"output {sink} must be one vector per text")
    return EmbeddingPlan(shape, source, sink)


def _pick(
    shape: ModelShape,
    specs: tuple[TensorSpec, ...],
    role: str,
    name: str,
    datatype: str,
    *,
    explicit: bool,
) -> TensorSpec:
    """The tensor called `name` if there is one (it must exist when
    explicit), else the only one of `datatype`."""
    named = next((spec for spec in specs if spec.name == name), None) if name else None
    if named is None and explicit:
        _refuse(shape, f"it has no {role} named {name!r}")
    if named is None:
        candidates = [spec for spec in specs if spec.datatype == datatype]
        if len(candidates) != 1:
            named_too = f", or one named {name!r}" if name else ""
            _refuse(shape, f"it needs exactly one {datatype} {role}{named_too}")
        named = candidates[0]
    if named.datatype != datatype:
        _refuse(shape, f"{role} {named} must be {datatype}")
    return named


def _refuse(shape: ModelShape, reason: str) -> NoReturn:
    raise FailedPrecondition(f"triton model {shape.name!r} is not supported: {reason}. Found {shape}. {SUPPORTED}.")
