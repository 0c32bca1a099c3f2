from headrace.v1 import generation_pb2
from services.cache.partition import Partition
from services.cache.semantic_key import semantic_key, semantic_requested

P = Partition("acme", "m@1")


def chat(*turns: tuple[str, str], **sampling: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        messages=[generation_pb2.ChatMessage(role=r, content=c) for r, c in turns],
        sampling=generation_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def scope(request: generation_pb2.GenerateRequest, partition: Partition = P) -> str:
    key = semantic_key(partition, request)
    assert key is not None
    return key.scope


def test_the_last_user_turn_is_matched_by_meaning_and_the_rest_exactly() -> None:
    base = chat(
        ("system", "Be brief."), ("user", "capital of France?"), ("assistant", "Paris."), ("user", "Population?")
    )
    key = semantic_key(P, base)
    assert key is not None and key.text == "Population?"
    # Same context, another wording of the last turn: same scope.
    reworded = chat(
        ("system", "Be brief."),
        ("user", "capital of France?"),
        ("assistant", "Paris."),
        ("user", "How many live there?"),
    )
    assert scope(reworded) == key.scope
    # Any change before the last turn is another scope.
    for other in (
        chat(("system", "Be brief."), ("user", "capital of Spain?"), ("assistant", "Paris."), ("user", "Population?")),
        chat(("system", "Be long."), ("user", "capital of France?"), ("assistant", "Paris."), ("user", "Population?")),
        chat(("user", "capital of France?"), ("assistant", "Paris."), ("user", "Population?")),
        chat(("user", "Population?")),
    ):
        assert scope(other) != key.scope


def test_scope_covers_sampling_tenant_and_version() -> None:
    base = scope(chat(("user", "hi"), temperature=0.0))
    assert scope(chat(("user", "hi"), temperature=0.0, max_tokens=5)) != base
    assert scope(chat(("user", "hi"), seed=1)) != base
    assert scope(chat(("user", "hi"), temperature=0.0), Partition("other", "m@1")) != base
    assert scope(chat(("user", "hi"), temperature=0.0), Partition("acme", "m@2")) != base


def test_prompt_and_chat_never_share_a_scope() -> None:
    prompt = generation_pb2.GenerateRequest(prompt="hi", sampling=generation_pb2.SamplingParams(temperature=0.0))
    assert scope(prompt) != scope(chat(("user", "hi"), temperature=0.0))
    key = semantic_key(P, prompt)
    assert key is not None and key.text == "hi"


def test_requests_without_a_user_turn_last_are_exact_only() -> None:
    assert semantic_key(P, chat(("user", "hi"), ("assistant", "Hel"))) is None
    assert semantic_key(P, chat(("user", "hi"), ("tool", "{}"))) is None
    assert semantic_key(P, chat(("user", "   "))) is None


def test_the_request_policy_overrides_the_service_default() -> None:
    policy = generation_pb2.CachePolicy()
    assert semantic_requested(policy, True) and not semantic_requested(policy, False)
    policy.semantic = False
    assert not semantic_requested(policy, True)
    policy.semantic = True
    assert semantic_requested(policy, False)
