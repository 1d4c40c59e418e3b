"""The "Sync Person to Microsoft" webhook (design B4, §7): Marketo creates the person in Dynamics in
real time when no record exists for them, and otherwise does nothing (it never forces a sync).

One call, in order:

1. the front door (``_webhook_request``): size, ``X-Sync-Secret``, body schema; a refusal is a
   4xx with reasons and nothing is read or written;
2. a link in the state store already → ``exists`` (no API call at all);
3. a claim ``sync-person:<leadId>`` (insert-if-absent in Table Storage): of N concurrent calls for
   one person one does the work; the others wait for its answer (up to ``CLAIM_WAIT``) and answer
   ``exists`` with the same record. An unfinished claim older than ``CLAIM_STALE`` (its owner
   died) and a finished one older than ``CLAIM_KEEP`` are taken over, so an old claim never blocks;
4. the person read from Marketo by id (the body is never trusted for values); a person the
   Marketo sync filter keeps out (``MARKETO_SYNC_FILTER_FIELD`` / ``MARKETO_SYNC_FILTER``) →
   ``filtered``, nothing written (issue 19: a person kept out is not created in Dynamics); one Dataverse
   ``$batch`` looks for a lead or contact with the person's email, or with the id the person's
   ``microsoftId`` names → ``exists``, nothing written;
5. the lead payload (mapped fields, ``createDefaults``, the owner) validated against Dataverse
   metadata, and for ``syncAs: contact`` the contact's too → 422 with reasons and one
   ``microsoftSyncFailed`` activity, nothing created;
6. create the lead (and ``QualifyLead`` it into a contact for ``syncAs: contact``), write the
   link and its baseline (so the next cycle sees nothing to do), finish the claim, set
   ``microsoftType``/``microsoftId``/``microsoftCreatedDate`` on the person.

API calls for a created lead, warm: Marketo read, Dataverse ``$batch``, Dataverse create, Marketo
write: 4 (``QualifyLead`` adds one for a contact). The clients retry briefly (a webhook caller
waits seconds, not minutes); Marketo or Dataverse down or throttled → 503 with ``Retry-After``,
and since nothing is written before the create, nothing is half-written. Logs carry the lead id
and outcomes only, never person values. While a call runs, background work in the process (a
backfill's chunks) waits at its next API call or Table operation (``http.ratebudget.live_work``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sync_core.core import flows as flow_names
from sync_core.core.convert import to_dataverse
from sync_core.core.entities import ENTITY_SETS, LEAD_STATE, PRIMARY_IDS, microsoft_fields
from sync_core.core.errors import (
    ConfigError,
    QuotaExceededError,
    RateLimitedError,
    RecordError,
    StateConflictError,
    SyncError,
    TransientError,
)
from sync_core.core.fieldmap import canonical_values
from sync_core.core.matching import RECORD_ORDER, best_record, email_key, known_record
from sync_core.core.models import Claim, Direction, EntityType, Link
from sync_core.cycle.schema_cache import ActiveSchema, active_schema
from sync_core.dataverse import odata as _odata
from sync_core.dataverse.client import DataverseClient
from sync_core.http.ratebudget import live_work
from sync_core.http.retry import RetryPolicy
from sync_core.marketo.activity import SyncFailure, log_sync_failures
from sync_core.marketo.client import MarketoClient
from sync_core.state import StateStore
from sync_core.telemetry import Telemetry, WebhookTimer, default_telemetry
from sync_core.webhook.request import LeadRequest, Refusal, SyncPersonRequest, check_size, read_request
from sync_core.wiring.services import Services, services_from_env

log = logging.getLogger(__name__)
R = TypeVar("R", bound=LeadRequest)

CLAIM_WAIT = 10.0  # seconds a concurrent call waits for the claim holder's answer
CLAIM_POLL = 0.2
CLAIM_STALE = timedelta(minutes=2)  # an unfinished claim this old: its owner died
CLAIM_KEEP = timedelta(minutes=10)  # a finished claim answers repeats this long (then the link does)
RETRY_AFTER_DEFAULT = 30
RETRY_AFTER_QUOTA = 3600
# Marketo gives a webhook 30 s: two attempts, a few seconds of waiting at most, then 503.
WEBHOOK_RETRY = RetryPolicy(max_attempts=2, initial_delay=0.25, max_delay=1.0, max_retry_after=2.0, max_total_wait=3.0)
SYNC_FIELDS = ("microsoftType", "microsoftId", "microsoftIsDeleted")
OWNER_BIND = "ownerid@odata.bind"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body, separators=(",", ":"))


def _refused(refusal: Refusal) -> Answer:
    return Answer(refusal.status, refusal.body())


def _exists(entity: EntityType, dynamics_id: str) -> Answer:
    return Answer(200, {"status": "exists", "entity": entity.value, "dynamicsId": dynamics_id})


FILTERED = Answer(
    200,
    {
        "status": "filtered",
        "reasons": ["the Marketo sync filter keeps this person out (MARKETO_SYNC_FILTER_FIELD / MARKETO_SYNC_FILTER)"],
    },
)


def _unavailable(reason: str, retry_after: float | None) -> Answer:
    seconds = max(1, math.ceil(retry_after)) if retry_after else RETRY_AFTER_DEFAULT
    return Answer(503, {"status": "unavailable", "reasons": [reason]}, {"Retry-After": str(seconds)})


@dataclass(frozen=True)
class Call:
    """What one call's work gets besides its request: the process's services, the clock, and the
    deadline by which it must have stopped starting writes."""

    services: Services
    clock: Callable[[], datetime]
    sleep: Callable[[float], None]
    deadline: float | None = None  # time.monotonic() by which to answer

    def before_writing(self) -> None:
        """Call before an irreversible step: past the deadline, stop having written nothing."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _DeadlinePassed("the webhook deadline passed")


@dataclass(frozen=True)
class Flow(Generic[R]):
    """A webhook: its name (the route under ``/api/marketo/`` and the status view's row), its body
    schema and its work. Every flow goes through the same front door, deadline and error answers."""

    name: str
    model: type[R]
    work: Callable[[R, Call], Answer]


def handle_webhook(
    flow: Flow[R],
    environ: Mapping[str, str],
    *,
    body: bytes,
    headers: Mapping[str, str],
    services: Services | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
    telemetry: Telemetry | None = None,
) -> Answer:
    """One webhook call, whatever the flow; never raises (every outcome is an ``Answer``, recorded
    as telemetry)."""
    timer = WebhookTimer()
    with live_work():  # background work in this process (a backfill's chunks) waits for the call
        answer = _answer(flow, environ, body=body, headers=headers, services=services, clock=clock, sleep=sleep)
    (telemetry or default_telemetry()).record_webhook(
        webhook=flow.name,
        status=answer.status,
        outcome=str(answer.body.get("status", "unknown")),
        started_ns=timer.started_ns,
        seconds=timer.seconds(),
    )
    return answer


def _answer(
    flow: Flow[R],
    environ: Mapping[str, str],
    *,
    body: bytes,
    headers: Mapping[str, str],
    services: Services | None,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
) -> Answer:
    started = time.monotonic()
    oversize = check_size(body)  # before anything else, even the settings
    if oversize is not None:
        return _refused(oversize)
    try:
        services = services or services_from_env(environ)
    except ConfigError as err:
        log.error("%s: the app is not configured: %s", flow.name, "; ".join(err.problems))
        return Answer(500, {"status": "error", "reasons": ["the sync is not configured; see the function log"]})
    secret = services.settings.webhook_shared_secret
    request = read_request(body, headers, secret.get_secret_value() if secret else None, flow.model)
    if isinstance(request, Refusal):
        log.info("%s: refused with %d", flow.name, request.status)
        answer = _refused(request)
    else:
        seconds = services.settings.webhook_deadline_seconds
        call = Call(services, clock, sleep, deadline=time.monotonic() + seconds)
        done = _by_deadline(lambda: _work(flow, request, call), seconds)
        if done is None:
            log.warning("%s %d: not finished within %g s; answered 503", flow.name, request.lead_id, seconds)
            done = _unavailable(
                f"the call could not finish within {seconds:g} s; try again later", DEADLINE_RETRY_AFTER
            )
        answer = done
        log.info("%s %d: %d %s", flow.name, request.lead_id, answer.status, answer.body.get("status"))
    _record_call(services.store, flow.name, answer, (time.monotonic() - started) * 1000, clock())
    return answer


def _record_call(store: StateStore, name: str, answer: Answer, ms: float, now: datetime) -> None:
    """The call in the status view's webhook row; statistics never fail a call."""
    try:
        store.record_webhook_call(name, outcome=str(answer.body.get("status") or answer.status), ms=ms, now=now)
    except SyncError as err:
        log.warning("%s: the call's statistics were not recorded (%s)", name, type(err).__name__)


def handle_sync_person(
    environ: Mapping[str, str],
    *,
    body: bytes,
    headers: Mapping[str, str],
    services: Services | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
    telemetry: Telemetry | None = None,
) -> Answer:
    """ "Sync Person to Microsoft" (design B4)."""
    return handle_webhook(
        SYNC_PERSON,
        environ,
        body=body,
        headers=headers,
        services=services,
        clock=clock,
        sleep=sleep,
        telemetry=telemetry,
    )


# -- the deadline (issue 16) -------------------------------------------------------------------------
#
# Marketo waits 30 s for a webhook. The work runs on a worker thread; the caller waits for it until
# WEBHOOK_DEADLINE_SECONDS and then answers 503 + Retry-After. The work itself checks the deadline
# before its one irreversible step (the create): past it, it gives its claim up having written
# nothing; once the create is sent it finishes (link, claim, person fields), so Marketo's retry
# finds the link and answers ``exists`` with the same record. Waiting for the Marketo rate budget
# or for another call's claim happens on the worker, so it never holds the answer past the deadline.

DEADLINE_RETRY_AFTER = 20  # Marketo's rate window: by then the budget has room again
_WORKERS = ThreadPoolExecutor(max_workers=256, thread_name_prefix="sync-person")  # mostly waiting threads


class _DeadlinePassed(SyncError):
    """The deadline passed before the create: stop, nothing written."""


def _by_deadline(work: Callable[[], Answer], seconds: float) -> Answer | None:
    """``work()`` on a worker thread; its answer, or None when it is not done within ``seconds``."""
    future = _WORKERS.submit(work)
    try:
        return future.result(timeout=seconds)
    except FutureTimeout:
        return None


def _work(flow: Flow[R], request: R, call: Call) -> Answer:
    """One call's work with its errors mapped to answers (runs on a worker thread)."""
    try:
        return flow.work(request, call)
    except _DeadlinePassed:
        log.info("%s %d: the deadline passed before writing; nothing written", flow.name, request.lead_id)
        return _unavailable("the call could not finish in time; try again later", DEADLINE_RETRY_AFTER)
    except TransientError as err:  # throttled, down, or out of daily quota
        retry_after = err.retry_after if isinstance(err, RateLimitedError) else None
        if isinstance(err, QuotaExceededError):
            retry_after = RETRY_AFTER_QUOTA
        service = err.service or "a service"
        log.warning("%s %d: %s unavailable (%s)", flow.name, request.lead_id, service, type(err).__name__)
        return _unavailable(f"{service} is unavailable or throttled; try again later", retry_after)
    except SyncError as err:
        log.error("%s %d: failed: %s", flow.name, request.lead_id, type(err).__name__)
        return Answer(502, {"status": "error", "reasons": [f"{type(err).__name__}: the call could not be completed"]})


def _sync_person(request: SyncPersonRequest, call: Call) -> Answer:
    return _SyncPerson(request, call).run()


SYNC_PERSON: Flow[SyncPersonRequest] = Flow(flow_names.SYNC_PERSON, SyncPersonRequest, _sync_person)


def person_record(lead_id: int, call: Call) -> tuple[EntityType, str] | Answer:
    """The person's lead or contact in Dynamics: the linked one, else synced first exactly as
    "Sync Person to Microsoft" does (as a lead, under the same claim); its answer when that fails."""
    answer = _sync_person(SyncPersonRequest.model_validate({"leadId": lead_id}), call)
    if answer.status != 200:
        return answer
    return EntityType(answer.body["entity"]), str(answer.body["dynamicsId"])


def take_claim(
    store: StateStore, key: str, *, clock: Callable[[], datetime], sleep: Callable[[float], None]
) -> Claim | dict[str, Any] | None:
    """Take the claim ``key`` (insert-if-absent): the claim when taken; the finished work's result
    when another call finished it less than ``CLAIM_KEEP`` ago; None after waiting ``CLAIM_WAIT``
    for a holder that is still at work. A claim older than ``CLAIM_STALE`` (its holder died) or a
    result older than ``CLAIM_KEEP`` is taken over, so an old claim never blocks."""
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        claim = store.try_claim(key, owner=owner, now=clock())
        if claim is not None:
            return claim
        current = store.get_claim(key)
        if current is None:
            continue  # released between our two reads: try again at once
        age = clock() - current.created_at
        if current.result is not None and age <= CLAIM_KEEP:
            return dict(current.result)
        if (current.result is not None and age > CLAIM_KEEP) or age > CLAIM_STALE:
            release_claim(store, current)  # an old answer, or a holder that died: take it over
            continue
        if time.monotonic() >= deadline:
            return None
        sleep(CLAIM_POLL)


def release_claim(store: StateStore, claim: Claim) -> None:
    try:
        store.release_claim(claim)
    except StateConflictError:
        pass  # someone else took it over or finished it meanwhile: theirs stands
    except SyncError:
        log.warning("webhook: claim %s could not be released; it expires by itself", claim.key)


def log_failure(marketo: MarketoClient, lead_id: int, entity: EntityType, reasons: list[str]) -> None:
    """One ``microsoftSyncFailed`` activity on the person; the answer already carries the reasons."""
    try:
        log_sync_failures(marketo, [SyncFailure(lead_id, entity, Direction.TO_DYNAMICS, tuple(reasons))])
    except SyncError as err:
        log.warning("webhook %d: the activity could not be logged (%s)", lead_id, type(err).__name__)


def unavailable(reason: str, retry_after: float | None) -> Answer:
    return _unavailable(reason, retry_after)


class _SyncPerson:
    def __init__(self, request: SyncPersonRequest, call: Call) -> None:
        services = call.services
        self.request = request
        self.call = call
        self.store: StateStore = services.store
        self.marketo: MarketoClient = services.marketo.with_retry_policy(WEBHOOK_RETRY)
        self.dataverse: DataverseClient = services.dataverse.with_retry_policy(WEBHOOK_RETRY)
        self.configured = services.field_map
        self.marketo_filter = services.settings.sync_filter.marketo
        self.clock = call.clock
        self.sleep = call.sleep
        self.key = f"sync-person:{request.lead_id}"

    def _before_writing(self) -> None:
        self.call.before_writing()

    def run(self) -> Answer:
        self._before_writing()  # queued behind other calls until past the deadline: do nothing at all
        link = self._link()
        if link is not None:
            return _exists(link.entity, link.dataverse_id)
        taken = self._claim()
        if isinstance(taken, Answer):
            return taken
        finished = False
        try:
            link = self._link()  # a call that finished between our first look and our claim
            answer = _exists(link.entity, link.dataverse_id) if link is not None else self._create()
            if answer.status == 200 and answer.body.get("status") in ("created", "exists"):
                self.store.complete_claim(taken, {k: answer.body[k] for k in ("entity", "dynamicsId")})
                finished = True
            return answer
        finally:
            if not finished:
                self._release(taken)

    # -- the claim --------------------------------------------------------------------------------

    def _link(self) -> Link | None:
        return self.store.get_links_by_marketo_ids([self.request.lead_id]).get(self.request.lead_id)

    def _claim(self) -> Claim | Answer:
        taken = take_claim(self.store, self.key, clock=self.clock, sleep=self.sleep)
        if taken is None:
            return _unavailable("another call for this person is still in progress", 5)
        if isinstance(taken, dict):
            return Answer(200, {**taken, "status": "exists"})
        return taken

    def _release(self, claim: Claim) -> None:
        release_claim(self.store, claim)

    # -- the work ---------------------------------------------------------------------------------

    def _create(self) -> Answer:
        lead_id = self.request.lead_id
        schema = active_schema(self.store, self.marketo, self.dataverse, self.configured, now=self.clock())
        fields = sorted({*schema.field_map.marketo_fields, *SYNC_FIELDS, *self.marketo_filter.fields})
        people = self.marketo.get_leads([lead_id], fields=fields)
        if not people:
            return Answer(404, {"status": "refused", "reasons": [f"no Marketo person has id {lead_id}"]})
        person = people[0]
        if not self.marketo_filter.admits(person):
            return FILTERED
        found = self._find_existing(schema, person)
        if found is not None:
            return _exists(*found)

        values = canonical_values(schema.field_map.fields, person, side="marketo")
        target = EntityType.CONTACT if self.request.sync_as == "contact" else EntityType.LEAD
        lead_payload, problems = self._payload(schema, EntityType.LEAD, values)
        if target is EntityType.CONTACT:
            _, contact_problems = self._payload(schema, EntityType.CONTACT, values)
            problems += [f"as a contact: {problem}" for problem in contact_problems]
        if problems:
            return self._reject(target, problems)
        if self.request.owner_id:
            lead_payload[OWNER_BIND] = f"/systemusers({self.request.owner_id})"

        self._before_writing()
        try:
            dynamics_id = self.dataverse.create(ENTITY_SETS[EntityType.LEAD], lead_payload)
        except RecordError as err:
            return self._reject(target, [f"Dynamics refused the lead: {reason}" for reason in err.reasons])
        created_at = self.clock()
        body: dict[str, Any] = {"status": "created", "entity": EntityType.LEAD.value, "dynamicsId": dynamics_id}

        def link_to(entity: EntityType, dataverse_id: str, originating_lead_id: str | None = None) -> Link:
            """The link and its baseline: what both sides now hold, per mapped field of ``entity``."""
            mappings = schema.field_map.for_entity(entity)
            return Link(
                marketo_id=lead_id,
                entity=entity,
                dataverse_id=dataverse_id,
                baseline={mapping.key: values.get(mapping.key) for mapping in mappings},
                originating_lead_id=originating_lead_id,
                updated_at=created_at,
            )

        link = link_to(EntityType.LEAD, dynamics_id)
        warnings: list[str] = []
        if target is EntityType.CONTACT:
            try:
                contact_id = self.dataverse.qualify_lead(dynamics_id)
            except (RecordError, TransientError) as err:
                # The lead stands and is linked; qualifying it is left to Dynamics users.
                reasons = err.reasons if isinstance(err, RecordError) else [f"{err.service} unavailable"]
                warnings.append("the lead was created but not qualified into a contact: " + "; ".join(reasons))
                self._log_failures([SyncFailure(lead_id, EntityType.CONTACT, Direction.TO_DYNAMICS, tuple(reasons))])
            else:
                link = link_to(EntityType.CONTACT, contact_id, originating_lead_id=dynamics_id)
                body.update(entity=EntityType.CONTACT.value, dynamicsId=contact_id, leadId=dynamics_id)
        self.store.upsert_links([link])
        warnings += self._mark_person(link, created_at)
        if warnings:
            body["warnings"] = warnings
        return Answer(200, body)

    def _find_existing(self, schema: ActiveSchema, person: Mapping[str, Any]) -> tuple[EntityType, str] | None:
        """A record the person already is (``core.matching``): by email or by the id in its
        ``microsoftId``, contacts and leads in one $batch."""
        queries: list[tuple[EntityType, tuple[str, dict[str, str]]]] = []
        for entity in RECORD_ORDER:
            primary = PRIMARY_IDS[entity]
            select = _odata.select_clause([primary, LEAD_STATE] if entity is EntityType.LEAD else [primary])
            conditions: list[str] = []
            mapping = schema.field_map.email_field(entity)
            column = mapping.column(entity) if mapping else None
            email = person.get(mapping.marketo) if mapping else None
            if column and email_key(email) is not None and isinstance(email, str):
                conditions.append(f"{_odata.identifier(column)} eq {_odata.quote_literal(email.strip())}")
            known_id = known_record(person, entity)
            if known_id is not None:
                with contextlib.suppress(ValueError):  # not a GUID: it cannot name a record
                    conditions.append(f"{primary} eq {_odata.guid_literal(known_id)}")
            if conditions:
                params = {"$select": select, "$filter": " or ".join(conditions), "$top": "10"}
                queries.append((entity, (ENTITY_SETS[entity], params)))
        if not queries:
            return None
        answers = self.dataverse.query_batch([query for _, query in queries])
        found = {entity: rows for (entity, _), rows in zip(queries, answers, strict=True)}
        return best_record(found, PRIMARY_IDS)

    def _payload(
        self, schema: ActiveSchema, entity: EntityType, values: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[str]]:
        """The create body for ``entity`` and what Dataverse would refuse in it."""
        created = to_dataverse(schema.field_map, entity, values, metadata=schema.metadata[entity], creating=True)
        return created.payload, created.problems

    def _reject(self, entity: EntityType, problems: list[str]) -> Answer:
        self._log_failures([SyncFailure(self.request.lead_id, entity, Direction.TO_DYNAMICS, tuple(problems))])
        return Answer(422, {"status": "rejected", "reasons": problems})

    def _log_failures(self, failures: list[SyncFailure]) -> None:
        for failure in failures:
            log_failure(self.marketo, failure.lead_id, failure.entity, list(failure.reasons))

    def _mark_person(self, link: Link, created_at: datetime) -> list[str]:
        """The sync-owned person fields; a failure here leaves the record and link standing."""
        created = created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        values = {"id": link.marketo_id, **microsoft_fields(link.entity, link.dataverse_id, created)}
        try:
            results = self.marketo.sync_leads([values], action="updateOnly", lookup_field="id")
        except SyncError as err:
            return [f"the person's microsoft fields were not set: {type(err).__name__}"]
        if not results[0].ok:
            return ["the person's microsoft fields were not set: " + "; ".join(r.message for r in results[0].reasons)]
        return []
