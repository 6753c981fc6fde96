"""The dashboard's bulk actions against a real PostgreSQL: a preview (count and sample) that changes nothing,
then a POST carrying the session's token that acts and says how many changed; refused without the token, in
--read-only, and for a state the action cannot act on."""

from __future__ import annotations

import hashlib
import hmac
import re

from starlette.testclient import TestClient

from pgsched import db
from pgsched.web.app import create_app


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', html).group(1)  # type: ignore[union-attr]


def hidden_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))


def states(conn: db.Connection) -> list[tuple]:
    return conn.rows("SELECT id, state::text, attempt FROM sched_jobs_all ORDER BY id")


def add_failures(conn: db.Connection, n: int) -> list[int]:
    return [
        r[0]
        for r in conn.rows(
            "INSERT INTO sched_jobs (queue, task, state, attempt, started_at, finished_at, error) "
            "SELECT 'web', 'report.build', 'failed', 3, now(), now(), 'ValueError: no such report' "
            "FROM generate_series(1, %s) RETURNING id",
            (n,),
        )
    ]


def test_a_bulk_retry_previews_then_acts_on_confirmation(client: TestClient, conn: db.Connection, seeded) -> None:
    more = add_failures(conn, 3)
    failures = client.get("/failures").text
    link = re.search(r'href="(/bulk/retry\?[^"]*queue=web[^"]*)"', failures).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    before = states(conn)
    preview = client.get(link)
    assert preview.status_code == 200
    assert re.search(r"<strong>4</strong> job\(s\) match", preview.text)
    for job_id in (seeded["failed"], *more):
        assert f'href="/jobs/{job_id}"' in preview.text
    assert "Yes, retry the 4 matching job(s)" in preview.text
    # The other actions keep the filter but not a state they may not act on.
    other = re.search(r'href="(/bulk/cancel\?[^"]*)"', preview.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    assert "state=&" in other and "queue=web" in other
    assert client.get(other).status_code == 200
    assert states(conn) == before  # a preview changes nothing
    form = hidden_fields(preview.text)
    assert form["queue"] == "web" and form["state"] == "failed" and form["error_like"] == "ValueError: no such report"

    done = client.post("/bulk/retry", data=form)
    assert done.status_code == 200, done.text
    assert "retried 4 of 4 matching job(s): 4 queued, 0 waiting on dependencies, 0 refused" in done.text
    assert {(s, a) for i, s, a in states(conn) if i in (seeded["failed"], *more)} == {("queued", 0)}
    # The other queue's failure with the same error did not match.
    assert conn.row("SELECT state::text FROM sched_jobs_all WHERE queue = 'other'") == ("failed",)
    # Posting the same form again changes nothing.
    again = client.post("/bulk/retry", data=form)
    assert "retried 0 of 0 matching job(s)" in again.text


def test_a_bulk_cancel_by_task_cancels_and_asks(client: TestClient, conn: db.Connection, seeded) -> None:
    preview = client.get("/bulk/cancel?queue=web&task=report.build")
    assert re.search(r"<strong>1</strong> job\(s\) match", preview.text)  # the running one
    done = client.post("/bulk/cancel", data=hidden_fields(preview.text))
    assert "cancelled 0 of 1 matching job(s) and 0 dependent job(s); asked the workers of 1 running" in done.text
    assert conn.row(
        "SELECT cancel_requested_at IS NOT NULL FROM sched_jobs_all WHERE id = %s", (seeded["running"],)
    ) == (True,)


def test_a_bulk_post_needs_the_sessions_token(client: TestClient, conn: db.Connection, seeded) -> None:
    preview = client.get("/bulk/retry?queue=web")
    form = hidden_fields(preview.text)
    before = states(conn)
    assert client.post("/bulk/retry", data={k: v for k, v in form.items() if k != "csrf"}).status_code == 403
    assert client.post("/bulk/retry", data={**form, "csrf": "0" * 64}).status_code == 403
    with TestClient(client.app) as other:
        assert other.post("/bulk/retry", data=form).status_code == 403
    refused = client.post("/bulk/retry", data=form, headers={"origin": "https://evil.example"})
    assert refused.status_code == 403
    assert states(conn) == before


def test_bad_filters_are_refused_and_nothing_changes(client: TestClient, conn: db.Connection, seeded) -> None:
    before = states(conn)
    wrong = client.get("/bulk/retry?state=queued&queue=web")
    assert wrong.status_code == 400 and "retry cannot act on queued jobs" in wrong.text
    token = csrf_of(client.get("/bulk/retry?queue=web").text)
    assert client.post("/bulk/retry", data={"csrf": token, "state": "running"}).status_code == 400
    assert client.post("/bulk/retry", data={"csrf": token}).status_code == 400  # no filter at all
    assert client.get("/bulk/explode?queue=web").status_code == 404
    empty = client.get("/bulk/purge?task=nothing.here")
    assert empty.status_code == 200 and "nothing to purge" in empty.text and 'id="confirm"' not in empty.text
    assert states(conn) == before


def test_read_only_refuses_bulk_actions(dsn: str, conn: db.Connection, seeded) -> None:
    app = create_app(dsn, read_only=True)
    with TestClient(app) as client:
        assert "/bulk/" not in client.get("/failures").text
        assert "/bulk/" not in client.get("/queues/web?state=failed").text
        assert client.get("/bulk/retry?queue=web").status_code == 403
        session = client.cookies.get("sched_session")
        secret = app.user_middleware[0].kwargs["secret"]
        token = hmac.new(secret, b"csrf:" + session.encode(), hashlib.sha256).hexdigest()
        refused = client.post("/bulk/retry", data={"csrf": token, "queue": "web"})
        assert refused.status_code == 403 and "this dashboard is read-only" in refused.text
    app.state.database.close()
    assert conn.row("SELECT state::text FROM sched_jobs_all WHERE id = %s", (seeded["failed"],)) == ("failed",)


def test_a_queues_jobs_page_links_the_bulk_actions_that_fit_its_filter(client: TestClient, seeded) -> None:
    failed = client.get("/queues/web?state=failed&task=report.build").text
    links = [h.replace("&amp;", "&") for h in re.findall(r'class="bulk" href="([^"]*)"', failed)]
    assert [h.split("?")[0] for h in links] == ["/bulk/retry", "/bulk/purge"]
    preview = client.get(links[0])
    assert re.search(r"<strong>1</strong> job\(s\) match", preview.text)
    queued = client.get("/queues/web?state=queued").text
    assert re.findall(r'class="bulk" href="(/bulk/\w+)', queued) == ["/bulk/cancel"]
