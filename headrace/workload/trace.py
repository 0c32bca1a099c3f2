"""The trace format: one JSON object a line, one request each, in arrival
order. A trace says what arrives when and what it asks; replaying it against
a mesh (replay.py) says how it was served.

    {"id": "r000017", "at_s": 3.208, "tenant": "acme", "lane": "online",
     "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "max_tokens": 32, "temperature": 0.0, "model": "",
     "origin": "paraphrase", "group": 12, "difficulty": "easy", "long": false}

- `at_s`: seconds from the start of the replay;
- `lane`: `online` (a reply is awaited now) or `batch` (a reply is needed
  within the batch window: submitted as an OpenAI Batch job);
- `origin`: `fresh` (first time this question is asked), `repeat` (the same
  text as an earlier request of its `group`) or `paraphrase` (the same
  question in other words);
- `difficulty` and `long` describe the request for reports and routing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Lane = Literal["online", "batch"]
Origin = Literal["fresh", "repeat", "paraphrase"]
Difficulty = Literal["easy", "hard"]


class TraceMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class TraceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    at_s: float = Field(ge=0)
    tenant: str = "default"
    lane: Lane = "online"
    messages: tuple[TraceMessage, ...] = Field(min_length=1)
    max_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    # Empty: the mesh's default model.
    model: str = ""
    origin: Origin = "fresh"
    group: int = Field(default=0, ge=0)
    difficulty: Difficulty = "easy"
    long: bool = False


class TraceError(ValueError):
    """A trace file that cannot be replayed, with the line that says why."""


def write_trace(records: Iterable[TraceRecord], path: Path) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(record.model_dump_json(exclude_defaults=False))
            out.write("\n")
            count += 1
    return count


def read_trace(path: Path) -> list[TraceRecord]:
    """Every record, checked: valid JSON, known fields, arrival order."""
    return list(iter_trace(path))


def iter_trace(path: Path) -> Iterator[TraceRecord]:
    previous = 0.0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = TraceRecord.model_validate(json.loads(line))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(part) for part in error['loc']) or 'line'}: {error['msg']}"
                    for error in exc.errors()
                )
                raise TraceError(f"{path}:{number}: {problems}") from exc
            except ValueError as exc:
                raise TraceError(f"{path}:{number}: not JSON ({exc})") from exc
            if record.at_s < previous:
                raise TraceError(f"{path}:{number}: at_s {record.at_s} comes before the line above ({previous})")
            previous = record.at_s
            yield record
