"""The official `openai` package, sync and async, streaming and not, against
the running mesh: an app pointed at Headrace changes nothing else."""

from __future__ import annotations

import asyncio
import uuid

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.mesh import InProcessMesh

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a river."}]


def async_client(mesh: InProcessMesh) -> openai.AsyncOpenAI:
    # Retries off: every test sees the gateway's first answer.
    return openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="unused-in-open-mode", max_retries=0)


def sync_client(mesh: InProcessMesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="unused-in-open-mode", max_retries=0)


def fresh(text: str) -> list[ChatCompletionMessageParam]:
    """A conversation no other test sent (the cache stays out of the way)."""
    return [{"role": "user", "content": f"{text} {uuid.uuid4().hex}"}]


async def test_async_chat_completion_with_usage_and_served_by_headers(gateway_mesh: InProcessMesh) -> None:
    async with async_client(gateway_mesh) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="smollm2", messages=fresh("hello"), max_tokens=6, temperature=0
        )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "smollm2@1"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content is not None
    assert len(choice.message.content.split()) == 6
    assert choice.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 6
    assert raw.headers["x-request-id"] and completion.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert raw.headers["x-headrace-model"] == "smollm2@1"
    assert raw.headers["x-headrace-route"] == "default"
    assert raw.headers["x-headrace-cache"] == "miss"


async def test_async_chat_stream_matches_the_whole_answer(gateway_mesh: InProcessMesh) -> None:
    messages = fresh("stream")
    async with async_client(gateway_mesh) as client:
        whole = await client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=7, temperature=0, extra_headers={"cache-control": "no-store"}
        )
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=messages,
            max_tokens=7,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"cache-control": "no-cache"},
        )
        chunks = [chunk async for chunk in stream]
    content = [c for c in chunks if c.choices]
    assert len(content) == 7
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert content[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in content) == whole.choices[0].message.content
    # include_usage: one last chunk with no choices and the usage.
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == "smollm2@1"


async def test_sync_client_whole_and_streamed(gateway_mesh: InProcessMesh) -> None:
    def call() -> tuple[str, list[str]]:
        with sync_client(gateway_mesh) as client:
            whole = client.chat.completions.create(model="chat", messages=fresh("sync"), max_tokens=4)
            with client.chat.completions.with_streaming_response.create(
                model="chat", messages=fresh("sync stream"), max_tokens=5, stream=True
            ) as response:
                assert response.headers["x-headrace-route"] == "alias:chat"
                stream = response.parse()
                assert isinstance(stream, openai.Stream)
                deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
        return whole.choices[0].message.content or "", deltas

    # The sync client blocks: off the loop the mesh runs on.
    text, deltas = await asyncio.to_thread(call)
    assert len(text.split()) == 4
    assert len(deltas) == 5 and all(deltas)


async def test_text_completions_sync_and_async(gateway_mesh: InProcessMesh) -> None:
    async with async_client(gateway_mesh) as client:
        completion = await client.completions.create(model="smollm2", prompt=f"Once {uuid.uuid4().hex}", max_tokens=3)
        stream = await client.completions.create(
            model="smollm2", prompt="Once upon", max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert completion.object == "text_completion" and len(completion.choices[0].text.split()) == 3
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, None, "length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

    def sync_call() -> str:
        with sync_client(gateway_mesh) as client:
            return client.completions.create(model="smollm2", prompt=["One prompt"], max_tokens=2).choices[0].text

    assert len((await asyncio.to_thread(sync_call)).split()) == 2


async def test_embeddings_as_base64_and_floats(gateway_mesh: InProcessMesh) -> None:
    async with async_client(gateway_mesh) as client:
        # The client asks for base64 unless told otherwise, and decodes it.
        raw = await client.embeddings.with_raw_response.create(model="minilm", input=["a river", "a mill"])
        floats = await client.embeddings.create(model="minilm", input="a river", encoding_format="float")
    decoded = raw.parse()
    assert decoded.model == "minilm@1" and [d.index for d in decoded.data] == [0, 1]
    assert len(decoded.data[0].embedding) == 384
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert decoded.usage.prompt_tokens == 4
    assert raw.headers["x-headrace-model"] == "minilm@1"


async def test_models_list_and_retrieve(gateway_mesh: InProcessMesh) -> None:
    async with async_client(gateway_mesh) as client:
        listing = await client.models.list()
        pinned = await client.models.retrieve("smollm2@1")
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("gpt-9")
    assert {m.id for m in listing.data} == {"smollm2", "smollm2@1", "chat", "minilm", "minilm@1"}
    assert pinned.id == "smollm2@1" and pinned.owned_by == "headrace"
    assert (pinned.model_extra or {})["headrace"]["resolves_to"] == "smollm2@1"
    assert "available: chat, minilm, smollm2" in caught.value.message


async def test_cache_control_maps_onto_the_cache_policy(gateway_mesh: InProcessMesh) -> None:
    messages = fresh("cache me")
    async with async_client(gateway_mesh) as client:

        async def ask(cache_control: str | None) -> str:
            headers = {"cache-control": cache_control} if cache_control else {}
            raw = await client.chat.completions.with_raw_response.create(
                model="smollm2", messages=messages, max_tokens=4, temperature=0, extra_headers=headers
            )
            return raw.headers["x-headrace-cache"]

        assert await ask("no-store") == "miss"
        await asyncio.sleep(0.3)
        assert await ask(None) == "miss"  # no-store kept the first answer out
        await asyncio.sleep(0.3)  # the store runs off the critical path
        assert await ask(None) == "hit-exact"
        assert await ask("no-cache") == "miss"
        assert await ask("max-age=3600") == "hit-exact"
        assert await ask("max-age=0") == "miss"
