from headrace.request_rules.cache_policy import bypass_reason, is_deterministic, no_store_reason
from headrace.v1 import generation_pb2
from services.cache.request_key import exact_key


def chat(*turns: tuple[str, str], **sampling: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        messages=[generation_pb2.ChatMessage(role=r, content=c) for r, c in turns],
        sampling=generation_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def test_key_covers_tenant_version_and_the_whole_conversation() -> None:
    base = chat(("user", "hi"), ("assistant", "hello"), ("user", "and?"), temperature=0.0)
    key = exact_key("acme", "m@1", base)
    assert exact_key("acme", "m@1", base) == key
    assert exact_key("globex", "m@1", base) != key
    assert exact_key("acme", "m@2", base) != key
    assert (
        exact_key("acme", "m@1", chat(("user", "hi"), ("assistant", "HELLO"), ("user", "and?"), temperature=0.0)) != key
    )
    assert exact_key("acme", "m@1", chat(("user", "and?"), temperature=0.0)) != key
    assert (
        exact_key(
            "acme", "m@1", chat(("user", "hi"), ("assistant", "hello"), ("user", "and?"), temperature=0.0, max_tokens=5)
        )
        != key
    )


def test_fields_that_do_not_change_the_answer_stay_out_of_the_key() -> None:
    a = chat(("user", "hi"), temperature=0.0)
    b = chat(("user", "hi"), temperature=0.0)
    b.session_id, b.user, b.priority = "s", "u", generation_pb2.PRIORITY_BATCH
    b.tags.append("doc-1")
    b.cache.max_age_s = 5
    assert exact_key("t", "m@1", a) == exact_key("t", "m@1", b)


def test_prompt_and_chat_never_share_a_key() -> None:
    prompt = generation_pb2.GenerateRequest(prompt="hi", sampling=generation_pb2.SamplingParams(temperature=0.0))
    assert exact_key("t", "m@1", prompt) != exact_key("t", "m@1", chat(("user", "hi"), temperature=0.0))


def test_only_deterministic_requests_are_cached_by_default() -> None:
    assert is_deterministic(chat(("user", "x"), temperature=0.0))
    assert is_deterministic(chat(("user", "x"), temperature=0.8, seed=7))
    assert not is_deterministic(chat(("user", "x")))
    assert not is_deterministic(chat(("user", "x"), temperature=0.5))
    sampled = chat(("user", "x"), temperature=0.5)
    assert bypass_reason(sampled) == "nondeterministic"
    sampled.cache.allow_nondeterministic = True
    assert bypass_reason(sampled) is None
    greedy = chat(("user", "x"), temperature=0.0)
    greedy.cache.no_cache = True
    assert bypass_reason(greedy) == "no-cache"


def test_incomplete_or_no_store_answers_are_not_stored() -> None:
    greedy = chat(("user", "x"), temperature=0.0)
    done = generation_pb2.GenerateResponse(finish_reason=generation_pb2.FINISH_REASON_STOP)
    aborted = generation_pb2.GenerateResponse(finish_reason=generation_pb2.FINISH_REASON_ABORT)
    assert no_store_reason(greedy, done) is None
    assert no_store_reason(greedy, aborted) == "incomplete"
    greedy.cache.no_store = True
    assert no_store_reason(greedy, done) == "no-store"
