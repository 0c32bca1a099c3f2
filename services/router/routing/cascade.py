"""The check a fast answer must pass before it is sent in a cascade: not
cut off by its token budget, not empty, not a refusal or "I don't know".
Cheap, textual checks: a judge model would cost what the cascade saves."""

from __future__ import annotations

from headrace.runtime.routing_settings import CascadeSettings


class TextualAnswerCheck:
    def __init__(self, settings: CascadeSettings) -> None:
        self._settings = settings
        self._markers = [m.lower() for m in settings.uncertain_markers if m.strip()]

    def failure(self, text: str, *, truncated: bool) -> str | None:
        if truncated and self._settings.escalate_on_truncation:
            return "truncated by max_tokens"
        stripped = text.strip()
        if len(stripped) < self._settings.min_answer_chars:
            return f"shorter than {self._settings.min_answer_chars} characters"
        lowered = stripped.lower()
        for marker in self._markers:
            if marker in lowered:
                return f"uncertain ({marker!r})"
        return None
