"""The streaming guard: tokens stream as they are generated, with the output guard in the loop.

Generation yields a chunk every ``streaming.chunk_tokens`` tokens. Each chunk is judged together with
the last ``lookback_chars`` characters released before it (a phrase cut in two is seen whole):

- **strict** (``streaming.strict: true``): a chunk is released only after its window is judged clean.
  No unjudged text ever reaches the client; each chunk waits for one judge call.
- **default**: chunk k is released at once and judged while chunk k+1 is generated; chunk k+1 is held
  until chunk k's verdict is in. So the most judged-late text a client can see is **one chunk** (the
  chunk whose window tripped the guard), and a clean stream pays no judge latency per chunk.

A tripped window ends that choice with ``finish_reason: "content_filter"`` (already released text cannot
be redacted, so a redact output stage also cuts when streaming). The input guard runs concurrently with
the start of generation; nothing is released before its verdict, and a block cancels the generation
(redact retries with the redacted prompt). Closing the stream (a client disconnect) closes the
generator, which stops generation at its next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from forewarn.config import GenerationParams
from forewarn.serve.config import StreamingSection
from forewarn.serve.engine import GenerationResult, StreamChunk
from forewarn.serve.pipeline import GuardedChoice, GuardedPipeline, GuardedResult
from forewarn.serve.policy import Decision, decide
from forewarn.serve.text import PromptView, normalize_text
from forewarn.models.base import Prompt


@dataclass
class StreamEvent:
    """One thing to send: a text ``delta`` of a choice, a choice's ``finish``, or ``done`` with the
    whole :class:`GuardedResult` (usage, forewarn field)."""

    kind: str  # "delta" | "finish" | "done"
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    result: GuardedResult | None = None


class GuardedStream:
    """One streamed request. :meth:`prepare` raises request errors (before any byte is sent);
    :meth:`events` is the async iterator of :class:`StreamEvent`."""

    def __init__(
        self, pipe: GuardedPipeline, prompt: Prompt, params: GenerationParams, settings: StreamingSection
    ):
        if pipe.stream_fn is None:
            raise ValueError("this pipeline was built without a streaming generation step")
        self.pipe, self.prompt, self.params, self.s = pipe, prompt, params, settings
        self.view: PromptView | None = None
        n = params.n
        self.released, self.finished = [""] * n, [False] * n
        self.outputs: list[Decision | None] = [None] * n
        self.input: Decision | None = None

    def prepare(self) -> None:
        self.view = self.pipe.view(self.prompt)

    def _start(self, prompt: Prompt) -> AsyncIterator[StreamChunk]:
        assert self.pipe.stream_fn is not None
        return self.pipe.stream_fn(prompt, self.params, self.s.chunk_tokens)

    async def _input_gate(
        self, gen: AsyncIterator[StreamChunk], verdict: asyncio.Future[Decision | None]
    ) -> tuple[AsyncIterator[StreamChunk], bool]:
        """Wait for the input verdict (judged while the first chunk was generated). Returns the generator
        to go on with (a new one after redaction) and whether the request is refused."""
        self.input = await verdict
        if self.input is None or not self.input.blocked:
            return gen, False
        await gen.aclose()  # type: ignore[attr-defined]
        redacted = await self.pipe.redact_prompt(self.prompt, self.input)
        if redacted is None:
            return gen, True
        self.view = self.pipe.view(redacted)
        return self._start(redacted), False

    async def _judge(self, rows: list[int], deltas: list[str]) -> list[int]:
        """Judge each row's window (look-back + new text); the rows the output guard blocks."""
        judge, pol = self.pipe.output_judge, self.pipe.policy
        if judge is None or not rows:
            return []
        assert self.view is not None
        lb = self.s.lookback_chars
        windows = [normalize_text((self.released[i][-lb:] if lb else "") + deltas[i]) for i in rows]
        verdicts = await self.pipe.judge(judge, [self.view.text] * len(rows), windows)
        bad = []
        for i, v in zip(rows, verdicts):
            d = decide("output", pol.output, v, judge, pol.on_judge_error)
            if d.blocked or self.outputs[i] is None:
                self.outputs[i] = d
            if d.blocked:
                d.action = "cut"
                bad.append(i)
        return bad

    def _cut(self, rows: list[int]) -> list[StreamEvent]:
        out = []
        for i in rows:
            if not self.finished[i]:
                self.finished[i] = True
                out.append(StreamEvent("finish", i, finish_reason="content_filter"))
        return out

    def _release(self, rows: list[int], deltas: list[str]) -> list[StreamEvent]:
        for i in rows:
            self.released[i] += deltas[i]
        return [StreamEvent("delta", i, deltas[i]) for i in rows]

    async def events(self) -> AsyncIterator[StreamEvent]:
        if self.view is None:
            self.prepare()
        assert self.view is not None
        gen = self._start(self.prompt)
        gated = self.pipe.input_judge is None
        verdict = None if gated else asyncio.ensure_future(self.pipe.input_decision(self.view))
        pending: asyncio.Task[list[int]] | None = None
        final: GenerationResult | None = None
        try:
            while final is None:
                try:
                    chunk = await gen.__anext__()
                except StopAsyncIteration:
                    break
                if verdict is not None and not gated:
                    gen, refused = await self._input_gate(gen, verdict)
                    gated = True
                    if refused:
                        for ev in self._refusal():
                            yield ev
                        return
                    if self.input is not None and self.input.blocked:
                        continue  # redacted: the first chunk came from the old prompt; drop it
                final = chunk.final
                if pending is not None:  # default mode: settle the previous chunk before releasing more
                    for ev in self._cut(await pending):
                        yield ev
                    pending = None
                rows = [
                    i for i, d in enumerate(chunk.deltas[: len(self.released)]) if d and not self.finished[i]
                ]
                if self.s.strict:
                    bad = await self._judge(rows, chunk.deltas)
                    for ev in self._cut(bad) + self._release([i for i in rows if i not in bad], chunk.deltas):
                        yield ev
                else:
                    for ev in self._release(rows, chunk.deltas):
                        yield ev
                    pending = asyncio.ensure_future(self._judge(rows, chunk.deltas))
                if all(self.finished):
                    break  # every choice cut: stop generating
            if pending is not None:
                for ev in self._cut(await pending):
                    yield ev
                pending = None
            for ev in self._finish(final):
                yield ev
        finally:
            for task in (pending, verdict):
                if task is not None and not task.done():
                    task.cancel()
            await gen.aclose()  # type: ignore[attr-defined]

    def _refusal(self) -> list[StreamEvent]:
        msg = self.pipe.policy.refusal_message
        n = len(self.released)
        out = [StreamEvent("delta", i, msg) for i in range(n)]
        out += [StreamEvent("finish", i, finish_reason="content_filter") for i in range(n)]
        assert self.input is not None
        return out + [StreamEvent("done", result=self.pipe.refused(n, self.input))]

    def _finish(self, final: GenerationResult | None) -> list[StreamEvent]:
        out, choices = [], []
        for i, text in enumerate(self.released):
            g = final.choices[i] if final is not None and i < len(final.choices) else None
            reason = "content_filter" if self.finished[i] else (g.completion.finish_reason if g else "length")
            if not self.finished[i]:
                out.append(StreamEvent("finish", i, finish_reason=reason))
            tokens = len(g.completion.token_ids) if g else 0
            choices.append(GuardedChoice(i, text, reason, tokens, self.outputs[i], g.stop if g else None))
        blocked = "input" if self.input is not None and self.input.blocked else None
        if blocked is None and any(self.finished):
            blocked = "output"
        result = GuardedResult(choices, final.prompt_tokens if final else 0, self.input, blocked)
        return out + [StreamEvent("done", result=result)]
