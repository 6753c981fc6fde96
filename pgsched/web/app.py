"""The dashboard's pages and actions: queues (live), a queue's jobs, one job, workers, schedules and recent
failures, rendered on the server; cancel, retry, pause and resume behind a confirmation page and a POST, and
bulk retry, cancel and purge by filter behind a preview (a count and a sample) and a POST."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pgsched import bulk, db, repository
from pgsched.dashboard import compact
from pgsched.durations import format_duration
from pgsched.errors import DatabaseUnavailable, NotFound, SchedError, WrongState
from pgsched.models import check_group, check_key, check_queue, check_task
from pgsched.render import trace_line
from pgsched.web.database import Cost, CountedConnection, Database
from pgsched.web.guard import Guard

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
T = TypeVar("T")


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(max(seconds, 0.0))


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def create_app(
    dsn: str, *, read_only: bool = False, token: str | None = None, stale_after_s: float = 30.0, refresh_s: float = 5.0
) -> Starlette:
    """The dashboard as an ASGI application reading ``dsn``."""
    database = Database(dsn)
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    templates.filters.update(
        age=_age, when=_when, pretty=_pretty, compact=compact, duration=format_duration, trace=trace_line
    )

    def render(request: Request, name: str, cost: Cost | None = None, status: int = 200, **context: Any) -> Response:
        html = templates.get_template(name).render(
            request=request,
            csrf=getattr(request.state, "csrf", ""),
            read_only=read_only,
            cost=cost,
            refresh_ms=int(refresh_s * 1000),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    async def read(call: Callable[[CountedConnection], T]) -> tuple[T, Cost]:
        return await run_in_threadpool(lambda: database.run(call, again_if_broken=True))

    async def act(call: Callable[[CountedConnection], T]) -> T:
        return (await run_in_threadpool(lambda: database.run(call, again_if_broken=False)))[0]

    async def queues(request: Request) -> Response:
        snap, cost = await run_in_threadpool(database.snapshot)
        partial = request.query_params.get("partial") == "1"
        template = "queues_live.html" if partial else "queues.html"
        return render(request, template, cost, snap=snap, stale_after_s=stale_after_s)

    async def jobs(request: Request) -> Response:
        queue = _checked(check_queue, request.path_params["queue"])
        params = request.query_params
        state = params.get("state") or "all"
        task = _checked(check_task, params["task"]) if params.get("task") else None
        key = _checked(check_key, params["key"]) if params.get("key") else None
        group = _checked(check_group, params["group"]) if params.get("group") else None
        cursor = params.get("after") or None
        page, cost = await read(
            lambda conn: repository.browse_jobs(
                conn, queue, state=state, task=task, key=key, group=group, cursor=cursor, limit=PAGE_SIZE
            )
        )
        filters = {"state": state, "task": task or "", "group": group or "", "key": key or ""}
        kept = {k: v for k, v in filters.items() if v}
        first_url = f"/queues/{queue}?" + urlencode(kept)
        next_url = f"/queues/{queue}?" + urlencode({**kept, "after": page.next_cursor}) if page.next_cursor else None
        return render(
            request,
            "jobs.html",
            cost,
            queue=queue,
            page=page,
            filters=filters,
            states=repository.BROWSE_STATES,
            next_url=next_url,
            first_url=first_url,
            first_page=cursor is None,
            walk_reason=_walk_reason(state, task, group, key),
        )

    def _job(conn: CountedConnection, job_id: int) -> dict[str, Any]:
        from pgsched.why import explain

        # What `sched status ID` reads, except that the dependencies' states are read for any job that has some
        # (the page lists them), and once.
        job = repository.get_job(conn, job_id)
        job["dependencies"] = repository.dependency_states(conn, job_id) if job["depends_on"] else []
        facts = repository.explain_facts(conn, job) if job["state"] == "queued" else {}
        job["why"] = explain(job, job["dependencies"], facts)
        return job

    async def job(request: Request) -> Response:
        job_id = _job_id(request)
        found, cost = await read(lambda conn: _job(conn, job_id))
        return render(request, "job.html", cost, job=found, done=request.query_params.get("done"))

    async def workers(request: Request) -> Response:
        found, cost = await read(repository.list_workers)
        return render(request, "workers.html", cost, workers=found, stale_after_s=stale_after_s)

    async def schedules(request: Request) -> Response:
        found, cost = await read(repository.list_schedules)
        return render(request, "schedules.html", cost, schedules=found)

    async def failures(request: Request) -> Response:
        groups, cost = await read(lambda conn: repository.failure_groups(conn))
        return render(request, "failures.html", cost, groups=groups)

    # --- actions: a GET shows what will happen and asks; the POST (with the session's token) does it ------

    def _refuse_if_read_only() -> None:
        if read_only:
            raise HTTPException(403, "this dashboard is read-only (--read-only)")

    async def confirm_job(request: Request) -> Response:
        _refuse_if_read_only()
        job_id, verb = _job_id(request), request.path_params["verb"]
        found, cost = await read(lambda conn: repository.get_job(conn, job_id))
        return render(request, "confirm.html", cost, verb=verb, job=found, action=f"/jobs/{job_id}/{verb}")

    async def act_on_job(request: Request) -> Response:
        _refuse_if_read_only()
        job_id, verb = _job_id(request), request.path_params["verb"]

        def perform(conn: CountedConnection) -> str:
            if verb == "cancel":
                result = repository.cancel_job(conn, job_id)
                if result.state == "running":
                    return "cancellation requested; its worker will stop it"
                extra = f" with {result.dependents_cancelled} dependent job(s)" if result.dependents_cancelled else ""
                return f"cancelled{extra}"
            outcome = repository.retry_job(conn, job_id)
            return "retried: queued" if outcome.queued else "retried: waiting on its dependencies"

        done = await act(perform)
        return RedirectResponse(f"/jobs/{job_id}?" + urlencode({"done": done}), status_code=303)

    async def confirm_queue(request: Request) -> Response:
        _refuse_if_read_only()
        queue, verb = _queue_action(request)
        return render(request, "confirm.html", None, verb=verb, queue=queue, action=f"/queues/{queue}/{verb}")

    async def act_on_queue(request: Request) -> Response:
        _refuse_if_read_only()
        queue, verb = _queue_action(request)
        paused = verb == "pause"
        await act(lambda conn: repository.set_queue_paused(conn, queue, paused))
        return RedirectResponse("/", status_code=303)

    async def bulk_preview(request: Request) -> Response:
        _refuse_if_read_only()
        verb = _bulk_verb(request)
        options = _bulk_options(request.query_params)
        if not bulk.filters_given(options):
            return _bulk_page(request, verb, options, None)
        job_filter = bulk.build_filter(verb, **options)
        report, cost = await read(lambda conn: bulk.preview(conn, verb, job_filter))
        return _bulk_page(request, verb, options, cost, preview=report)

    async def bulk_act(request: Request) -> Response:
        _refuse_if_read_only()
        verb = _bulk_verb(request)
        options = _bulk_options(request.state.form)  # read by the guard when it checked the token
        if not bulk.filters_given(options):
            raise HTTPException(400, "give at least one filter")
        job_filter = bulk.build_filter(verb, **options)
        report = await run_in_threadpool(lambda: _perform_on_own_connection(dsn, verb, job_filter))
        return _bulk_page(request, verb, options, None, done=report, summary=bulk.summary(report))

    def _bulk_page(request: Request, verb: str, options: dict[str, Any], cost: Cost | None, **shown: Any) -> Response:
        fields = _form_fields(options)
        return render(request, "bulk.html", cost, verb=verb, fields=fields, acts_on=bulk.ACTS_ON[verb], **shown)

    async def failed(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return render(request, "error.html", status=exc.status_code, message=exc.detail)
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, WrongState) else 400
        if isinstance(exc, DatabaseUnavailable):
            status = 503
        return render(request, "error.html", status=status, message=exc.message)  # type: ignore[attr-defined]

    routes = [
        Route("/", queues),
        Route("/queues/{queue}", jobs),
        Route("/queues/{queue}/{verb:str}", confirm_queue, methods=["GET"]),
        Route("/queues/{queue}/{verb:str}", act_on_queue, methods=["POST"]),
        Route("/jobs/{id:int}", job),
        Route("/jobs/{id:int}/{verb:str}", confirm_job, methods=["GET"]),
        Route("/jobs/{id:int}/{verb:str}", act_on_job, methods=["POST"]),
        Route("/workers", workers),
        Route("/schedules", schedules),
        Route("/failures", failures),
        Route("/bulk/{verb:str}", bulk_preview, methods=["GET"]),
        Route("/bulk/{verb:str}", bulk_act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token, secret=secrets.token_bytes(32))],
        exception_handlers={SchedError: failed, HTTPException: failed},
    )
    app.state.database = database
    return app


def _job_id(request: Request) -> int:
    verb = request.path_params.get("verb")
    if verb is not None and verb not in ("cancel", "retry"):
        raise HTTPException(404, f"no action {verb!r} on jobs: cancel or retry")
    return int(request.path_params["id"])


def _perform_on_own_connection(dsn: str, verb: str, job_filter: bulk.JobFilter) -> bulk.BulkReport:
    """A bulk action on a connection of its own: its batches may take a while, and the pages' shared connection
    stays free for everyone else meanwhile."""
    with db.connect(dsn, application_name="sched-ui") as conn:
        return bulk.perform(conn, verb, job_filter)


_BULK_FIELDS = ("state", "queue", "task", "error_like", "since", "group", "key")


def _bulk_verb(request: Request) -> str:
    verb = request.path_params["verb"]
    if verb not in bulk.ACTS_ON:
        raise HTTPException(404, f"no bulk action {verb!r}: retry, cancel or purge")
    return verb


def _bulk_options(values: Any) -> dict[str, Any]:
    """The filter of a bulk form (a query string or a posted form), as ``bulk.build_filter`` takes it."""
    given = {name: (values.get(name) or "").strip() or None for name in _BULK_FIELDS}
    state = given.pop("state")
    given["states"] = [state] if state else None
    return given


def _form_fields(options: dict[str, Any]) -> dict[str, str]:
    """The filter as form fields again (the preview's confirmation posts them back unchanged)."""
    fields = {name: options.get(name) or "" for name in _BULK_FIELDS if name != "state"}
    return {"state": (options.get("states") or [""])[0], **fields}


def _walk_reason(state: str, task: str | None, group: str | None, key: str | None) -> str:
    """Why a page of this filter may examine many jobs to find a few (sql/queries/browse.sql)."""
    if task is not None:
        return "no index holds jobs by task, so the task filter is checked job by job"
    if group is not None:
        return "the pages walk the jobs in the listing's own order, so the group filter is checked job by job"
    if key is not None:
        return "the key index holds live jobs only, so finished jobs are checked job by job"
    if state in ("succeeded", "failed", "cancelled"):
        return "finished jobs of every queue and final state share one index, ordered by when they finished"
    if state == "waiting":
        return "no index holds waiting jobs, so the page walks the jobs that have dependencies"
    return "this listing walks the jobs of every queue by id"


def _queue_action(request: Request) -> tuple[str, str]:
    verb = request.path_params["verb"]
    if verb not in ("pause", "resume"):
        raise HTTPException(404, f"no action {verb!r} on queues: pause or resume")
    return _checked(check_queue, request.path_params["queue"]), verb


def _checked(check: Callable[[str], Any], value: str) -> str:
    check(value)
    return value
