"""The prediction log and trip outcomes (`POST /feedback`), in the online store's Redis.

Why Redis: every worker and replica already reaches it, it is there wherever the ranker runs
(PostgreSQL is not, under `make serve`), and a prediction costs one pipelined write; the A/B
report reads the two streams once. What is kept, for OUTCOME_RETENTION_S (7 days by default):
- per answered request, a hash `dr:<project>:p:{<request id>}` (model, version, role, best driver
  and its score, drivers), which feedback checks, and an entry of the stream
  `dr:<project>:predictions`;
- per outcome, a field of `dr:<project>:f:{<request id>}` (driver -> 0/1: a repeated event is
  recognised) and an entry of the stream `dr:<project>:feedback`.
The streams are trimmed by age (XADD MINID). Both hashes of a request share its hash slot (the
`{...}` tag), so one script checks and records an outcome on a Redis Cluster too.

Logging never slows or fails an answer: `record` puts the prediction in a bounded queue and a
background task writes batches; a full queue or a Redis error drops predictions and counts them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, fields

import redis.asyncio as aioredis
from pydantic import TypeAdapter, ValidationError

from driver_ranker import metrics
from driver_ranker.errors import FeatureStoreUnavailable
from driver_ranker.features.store import REDIS_ERRORS
from driver_ranker.serving.http_errors import validation_message
from driver_ranker.serving.schemas import FeedbackAnswer, FeedbackEvent, FeedbackEvents

FEEDBACK_EVENT = TypeAdapter(FeedbackEvent)
FEEDBACK_EVENTS = TypeAdapter(FeedbackEvents)
FEEDBACK_SHAPE = "a JSON object with request_id, driver_id and completed, or a list of them"

logger = logging.getLogger(__name__)

BATCH = 500
"""Predictions written per call."""

# A batch of predictions in one call: ARGV = retention (s), the oldest stream id kept (ms), the
# hash key prefix, the stream, the number of fields, their names, then per prediction a JSON list
# of its values (strings, request id first). Packing ~40 arguments per prediction in redis-py
# cost a worker more than its feature read; one argument each costs little. Not on a Redis
# Cluster, where a request's hash and the stream live in different slots: a pipeline there.
WRITE_PREDICTIONS = """
local retention, minid, prefix, stream = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
local names = {unpack(ARGV, 6, 5 + n)}
local fields = {}
for i = 6 + n, #ARGV do
  local values = cjson.decode(ARGV[i])
  for j = 1, n do fields[2 * j - 1] = names[j]; fields[2 * j] = values[j] end
  local key = prefix .. '{' .. values[1] .. '}'
  redis.call('HSET', key, unpack(fields))
  redis.call('EXPIRE', key, retention)
  redis.call('XADD', stream, 'MINID', '~', minid, '*', unpack(fields))
end
return #ARGV - 5 - n
"""

# {code, version}: 2 recorded, for the driver the model recommended (of that version), 1 recorded
# for another driver, 0 the same outcome again, -1 no such prediction (never answered, or
# expired), -2 the other outcome was recorded before.
RECORD_OUTCOME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, ''} end
local prior = redis.call('HGET', KEYS[2], ARGV[1])
if prior then
  if prior == ARGV[2] then return {0, ''} end
  return {-2, ''}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local predicted = redis.call('HMGET', KEYS[1], 'best_driver_id', 'version')
if predicted[1] == ARGV[1] then return {2, predicted[2]} end
return {1, ''}
"""


@dataclass(frozen=True)
class Prediction:
    request_id: str
    model: str
    version: str
    role: str
    best_driver_id: int | None
    best_score: float | None
    drivers: int
    at: float
    """Epoch seconds of the answer."""

    def values(self) -> list[str]:
        """The stored form of each field, in PREDICTION_FIELDS' order ("" for None)."""
        # Not dataclasses.astuple, which deep-copies every field: a tenth of the writer's time.
        return ["" if v is None else str(v) for v in (getattr(self, name) for name in PREDICTION_FIELDS)]


PREDICTION_FIELDS = [f.name for f in fields(Prediction)]


@dataclass(frozen=True)
class Outcome:
    request_id: str
    driver_id: int
    completed: bool


@dataclass
class FeedbackResult:
    recorded: int = 0
    repeated: int = 0
    unknown: list[str] | None = None
    """Request ids never answered, or answered longer ago than the retention."""
    conflicting: list[Outcome] | None = None
    """Outcomes that contradict one recorded before (the first one stands)."""


class OutcomeStore:
    """Predictions and outcomes of one Feast project in Redis; one per worker (its event loop)."""

    def __init__(
        self, client: aioredis.Redis | aioredis.RedisCluster, project: str, retention_s: int, queue: int
    ):
        self._client = client
        self._prefix = f"dr:{project}"
        self.retention_s = retention_s
        self._queue: asyncio.Queue[Prediction] = asyncio.Queue(maxsize=queue)
        self._write_script = (
            None if isinstance(client, aioredis.RedisCluster) else client.register_script(WRITE_PREDICTIONS)
        )

    def prediction_key(self, request_id: str) -> str:
        return f"{self._prefix}:p:{{{request_id}}}"

    def outcome_key(self, request_id: str) -> str:
        return f"{self._prefix}:f:{{{request_id}}}"

    @property
    def predictions_stream(self) -> str:
        return f"{self._prefix}:predictions"

    @property
    def feedback_stream(self) -> str:
        return f"{self._prefix}:feedback"

    @property
    def arms_key(self) -> str:
        """Outcomes of each version's recommendations: fields `<version>:completed` / `:failed`."""
        return f"{self._prefix}:arms"

    async def arm_counts(self, versions: list[str]) -> dict[str, tuple[int, int]]:
        """(completed, failed) outcomes of each version's recommended drivers, in one command."""
        fields = [f"{v}:{kind}" for v in versions for kind in ("completed", "failed")]
        values = await self._client.hmget(self.arms_key, fields) if fields else []
        counts = [int(v or 0) for v in values]
        return {v: (counts[2 * i], counts[2 * i + 1]) for i, v in enumerate(versions)}

    async def role_of(self, request_id: str) -> str | None:
        """The role that answered this request before, if it was answered (a retry)."""
        role = await self._client.hget(self.prediction_key(request_id), "role")
        return role.decode() if role else None

    def record(self, prediction: Prediction) -> None:
        """Queues the prediction for the writer; never blocks, never raises."""
        try:
            self._queue.put_nowait(prediction)
        except asyncio.QueueFull:
            metrics.PREDICTIONS_LOGGED.labels(outcome="dropped_queue_full").inc()

    async def write_forever(self) -> None:
        """The writer: batches of queued predictions, one pipeline each."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
                metrics.PREDICTIONS_LOGGED.labels(outcome="written").inc(len(batch))
            except (TimeoutError, *REDIS_ERRORS) as exc:
                metrics.PREDICTIONS_LOGGED.labels(outcome="dropped_store_error").inc(len(batch))
                logger.warning("%d predictions not logged: %r", len(batch), exc)
            for _ in batch:
                self._queue.task_done()

    async def _write(self, batch: list[Prediction]) -> None:
        oldest_ms = int((time.time() - self.retention_s) * 1000)
        if self._write_script is not None:
            head = [self.retention_s, oldest_ms, f"{self._prefix}:p:", self.predictions_stream]
            rows = [json.dumps(p.values(), ensure_ascii=False) for p in batch]
            await self._write_script(args=[*head, len(PREDICTION_FIELDS), *PREDICTION_FIELDS, *rows])
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for prediction in batch:
                mapping = dict(zip(PREDICTION_FIELDS, prediction.values(), strict=True))
                key = self.prediction_key(prediction.request_id)
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, self.retention_s)
                pipe.xadd(self.predictions_stream, mapping, minid=oldest_ms, approximate=True)
            await pipe.execute()

    async def flush(self, within_s: float = 5.0) -> None:
        """Waits until every queued prediction is written (or dropped)."""
        await asyncio.wait_for(self._queue.join(), within_s)

    async def record_outcomes(self, outcomes: list[Outcome]) -> FeedbackResult:
        """Records outcomes of answered requests. When any request id is unknown, records none and
        says which (the caller answers 404). Raises FeatureStoreUnavailable when Redis does not answer."""
        try:
            return await self._record_outcomes(outcomes)
        except (TimeoutError, *REDIS_ERRORS) as exc:
            raise FeatureStoreUnavailable(
                f"the prediction log did not answer: {str(exc) or 'timed out'}"
            ) from exc

    async def _record_outcomes(self, outcomes: list[Outcome]) -> FeedbackResult:
        request_ids = list(dict.fromkeys(o.request_id for o in outcomes))
        async with self._client.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.exists(self.prediction_key(request_id))
            known = await pipe.execute()
        unknown = [r for r, exists in zip(request_ids, known, strict=True) if not exists]
        if unknown:
            metrics.FEEDBACK.labels(outcome="unknown_request").inc(len(outcomes))
            return FeedbackResult(unknown=unknown)
        result = FeedbackResult(conflicting=[])
        # EVAL, not EVALSHA: a pipeline (a cluster's too) then needs no script loaded beforehand.
        async with self._client.pipeline(transaction=False) as pipe:
            for outcome in outcomes:
                keys = [self.prediction_key(outcome.request_id), self.outcome_key(outcome.request_id)]
                pipe.eval(
                    RECORD_OUTCOME, 2, *keys, outcome.driver_id, int(outcome.completed), self.retention_s
                )
            answers = await pipe.execute()
        now_ms = int(time.time() * 1000)
        recorded: list[Outcome] = []
        judged: Counter[str] = Counter()  # "<version>:completed" / "<version>:failed" of recommendations
        for outcome, (answer, version) in zip(outcomes, answers, strict=True):
            if answer in (1, 2):
                recorded.append(outcome)
                if answer == 2:
                    judged[f"{version.decode()}:{'completed' if outcome.completed else 'failed'}"] += 1
            elif answer == 0:
                result.repeated += 1
            elif answer == -2:
                result.conflicting.append(outcome)
            else:  # expired since the check above
                result.unknown = [*(result.unknown or []), outcome.request_id]
        if recorded:
            async with self._client.pipeline(transaction=False) as pipe:
                for outcome in recorded:
                    fields = {
                        "request_id": outcome.request_id,
                        "driver_id": outcome.driver_id,
                        "completed": int(outcome.completed),
                        "at": time.time(),
                    }
                    pipe.xadd(
                        self.feedback_stream, fields, minid=now_ms - self.retention_s * 1000, approximate=True
                    )
                for field, count in judged.items():
                    pipe.hincrby(self.arms_key, field, count)
                await pipe.execute()
        result.recorded = len(recorded)
        for outcome, count in (("recorded", result.recorded), ("repeated", result.repeated),
                               ("conflicting", len(result.conflicting)), ("unknown_request", len(result.unknown or []))):  # fmt: skip
            if count:
                metrics.FEEDBACK.labels(outcome=outcome).inc(count)
        return result


async def feedback_answer(store: OutcomeStore | None, body: bytes) -> tuple[int, dict]:
    """POST /feedback: the status and JSON answer for a body of one event or a list of them."""
    try:
        raw = json.loads(body)
    except ValueError as exc:
        return 400, {"error": f"the body is not valid JSON ({exc})"}
    # One shape or the other by the JSON's own type, so that errors name the field, not the union.
    adapter = FEEDBACK_EVENTS if isinstance(raw, list) else FEEDBACK_EVENT
    try:
        parsed = adapter.validate_python(raw)
    except ValidationError as exc:
        return 400, {"error": validation_message(exc.errors(include_url=False), FEEDBACK_SHAPE)}
    if store is None:
        return 503, {
            "error": "the prediction log is off (PREDICTION_LOG=false, or the online store is not Redis)"
        }
    events = parsed if isinstance(parsed, list) else [parsed]
    outcomes = [Outcome(e.request_id, e.driver_id, e.completed) for e in events]
    try:
        result = await store.record_outcomes(outcomes)
    except FeatureStoreUnavailable as exc:
        return 503, {"error": f"{exc}; retry shortly"}
    if result.unknown:
        days = store.retention_s / 86400
        return 404, {
            "error": f"no answer with request_id {result.unknown[:10]} in the last {days:g} days (never answered, or "
            f"older than OUTCOME_RETENTION_S); nothing of this body was recorded"
        }
    if result.conflicting:
        first = result.conflicting[0]
        return 409, {
            "error": f"{len(result.conflicting)} outcome(s) contradict one recorded before, which stands (e.g. "
            f"request {first.request_id!r}, driver {first.driver_id}); the other {result.recorded} were recorded"
        }
    return 200, FeedbackAnswer(recorded=result.recorded, repeated=result.repeated).model_dump()
