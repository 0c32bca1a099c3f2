"""What the triton engine decides a model serves, from its config proto."""

from __future__ import annotations

from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2

from headrace.runtime.errors import FailedPrecondition
from services.worker.engines.triton_model import (
    EmbeddingPlan,
    GenerationPlan,
    ModelShape,
    plan_model,
    shape_from_config,
)


def config(
    name: str,
    inputs: list[tuple[str, str, list[int]] | tuple[str, str, list[int], bool]],
    outputs: list[tuple[str, str, list[int]]],
    *,
    max_batch_size: int = 0,
    decoupled: bool = False,
) -> ModelShape:
    proto: Any = model_config_pb2.ModelConfig(name=name, max_batch_size=max_batch_size)
    proto.model_transaction_policy.decoupled = decoupled
    for name_, dtype, dims, *optional in inputs:
        proto.input.add(
            name=name_, data_type=model_config_pb2.DataType.Value(dtype), dims=dims, optional=bool(optional)
        )
    for name_, dtype, dims in outputs:
        proto.output.add(name=name_, data_type=model_config_pb2.DataType.Value(dtype), dims=dims)
    return shape_from_config(proto)


# The config Triton's vLLM backend completes for itself (src/model.py).
VLLM_BACKEND = config(
    "vllm_model",
    [
        ("text_input", "TYPE_STRING", [1]),
        ("image", "TYPE_STRING", [-1], True),
        ("stream", "TYPE_BOOL", [1], True),
        ("sampling_parameters", "TYPE_STRING", [1], True),
        ("exclude_input_in_output", "TYPE_BOOL", [1], True),
        ("return_finish_reason", "TYPE_BOOL", [1], True),
        ("return_cumulative_logprob", "TYPE_BOOL", [1], True),
        ("return_logprobs", "TYPE_BOOL", [1], True),
        ("return_num_input_tokens", "TYPE_BOOL", [1], True),
        ("return_num_output_tokens", "TYPE_BOOL", [1], True),
        ("embedding_request", "TYPE_STRING", [1], True),
    ],
    [
        ("text_output", "TYPE_STRING", [-1]),
        ("finish_reason", "TYPE_STRING", [-1]),
        ("cumulative_logprob", "TYPE_FP32", [-1]),
        ("logprobs", "TYPE_STRING", [-1]),
        ("num_input_tokens", "TYPE_UINT32", [1]),
        ("num_output_tokens", "TYPE_UINT32", [-1]),
    ],
    decoupled=True,
)

MINILM = config(
    "minilm",
    [("text", "TYPE_STRING", [1])],
    [("embedding", "TYPE_FP32", [-1])],
    max_batch_size=64,
)


def test_reads_names_types_dims_and_policy() -> None:
    assert str(MINILM) == ("decoupled=False, max_batch_size=64, inputs: text BYTES[1]; outputs: embedding FP32[-1]")
    stream = VLLM_BACKEND.input("stream")
    assert stream is not None and stream.optional and stream.datatype == "BOOL"


def test_vllm_backend_model_generates_with_all_its_extras() -> None:
    plan = plan_model(VLLM_BACKEND)
    assert isinstance(plan, GenerationPlan)
    assert (plan.text_input.name, plan.text_output.name) == ("text_input", "text_output")
    assert plan.extras == {
        "stream",
        "sampling_parameters",
        "exclude_input_in_output",
        "return_finish_reason",
        "return_num_input_tokens",
        "return_num_output_tokens",
    }
    assert plan.reports == {"finish_reason", "num_input_tokens", "num_output_tokens"}


def test_embedding_model_embeds_and_batches() -> None:
    plan = plan_model(MINILM)
    assert isinstance(plan, EmbeddingPlan)
    assert (plan.text_input.name, plan.vector_output.name) == ("text", "embedding")
    assert plan.texts_per_call == 64


@pytest.mark.parametrize(
    ("dims", "output_dims", "per_call"),
    [([-1], [-1, 384], 0), ([1], [1, 384], 1)],
)
def test_unbatched_embedding_model(dims: list[int], output_dims: list[int], per_call: int) -> None:
    shape = config("e", [("texts", "TYPE_STRING", dims)], [("vectors", "TYPE_FP32", output_dims)])
    plan = plan_model(shape)
    assert isinstance(plan, EmbeddingPlan)
    assert plan.texts_per_call == per_call


def test_names_can_be_forced() -> None:
    shape = config(
        "two",
        [("query", "TYPE_STRING", [1]), ("passage", "TYPE_STRING", [1], True)],
        [("pooled", "TYPE_FP32", [384]), ("tokens", "TYPE_FP32", [-1, 384])],
        max_batch_size=8,
    )
    with pytest.raises(FailedPrecondition, match="exactly one BYTES input"):
        plan_model(shape)
    with pytest.raises(FailedPrecondition, match="exactly one FP32 output"):
        plan_model(shape, text_input="query")
    plan = plan_model(shape, text_input="query", text_output="pooled")
    assert isinstance(plan, EmbeddingPlan)
    assert plan.vector_output.name == "pooled"


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        (
            config("img", [("image", "TYPE_UINT8", [224, 224, 3])], [("probs", "TYPE_FP32", [1000])], max_batch_size=8),
            "it needs exactly one BYTES input",
        ),
        (
            config("unary-llm", [("text_input", "TYPE_STRING", [1])], [("text_output", "TYPE_STRING", [-1])]),
            "a text output needs a decoupled",
        ),
        (
            config(
                "needs-more",
                [("text", "TYPE_STRING", [1]), ("lang", "TYPE_STRING", [1])],
                [("embedding", "TYPE_FP32", [-1])],
                max_batch_size=4,
            ),
            "exactly one BYTES input",
        ),
        (
            config(
                "needs-mask",
                [("text_input", "TYPE_STRING", [1]), ("mask", "TYPE_INT32", [-1])],
                [("text_output", "TYPE_STRING", [-1])],
                decoupled=True,
            ),
            "needs input mask INT32\\[-1\\]",
        ),
        (
            config(
                "int-output",
                [("text_input", "TYPE_STRING", [1])],
                [("text_output", "TYPE_INT32", [-1])],
                decoupled=True,
            ),
            "output text_output INT32\\[-1\\] must be BYTES",
        ),
        (
            config("matrix", [("text", "TYPE_STRING", [1])], [("embedding", "TYPE_FP32", [-1, 384])], max_batch_size=8),
            "must be one vector per text",
        ),
    ],
)
def test_unsupported_models_are_refused_naming_what_was_found(shape: ModelShape, reason: str) -> None:
    with pytest.raises(FailedPrecondition, match=reason) as caught:
        plan_model(shape)
    message = str(caught.value)
    assert f"triton model {shape.name!r} is not supported" in message
    assert f"Found {shape}" in message
    assert "embedding model" in message and "decoupled text-generation model" in message


def test_forced_name_that_does_not_exist() -> None:
    with pytest.raises(FailedPrecondition, match="it has no input named 'prompt'"):
        plan_model(VLLM_BACKEND, text_input="prompt")
