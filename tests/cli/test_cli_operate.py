"""The operator's commands (events, customer, replay, reconcile, purge, doctor) on real data.

Every test first produces its data the way production does, by posting signed deliveries
through the app (the `stripe` fixture), then runs the command through click's CliRunner
against the test's own database and checks both what it printed and what it left in the
database.
"""

import json
import uuid

import psycopg
import pytest
from click.testing import CliRunner, Result
from servers import closed_port
from stripe_events import Delivery, EventFactory
from webhook_support import SECRET, StripeSender, customer_state, event_status, outcome_rows

from webhook.cli import cli, repair_commands

TEAM_PLAN = (
    "insert into public.plans (name, price, resources, stripe_price_id)"
    " values ('Team', 29.00, '{\"api_calls\": 9000}', 'price_team') returning id"
)


def run(db_url: str, *args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--database-url", db_url, *args], env=env)


def succeeds(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def fails(result: Result, code: int = 1) -> str:
    """The command failed with `code`, as click does on purpose: no traceback, the error on
    one line, the only line on stderr (a usage mistake, exit 2, too: no usage block).
    Returns the error line."""
    assert result.exit_code == code, result.output
    # CliRunner turns an escaped exception into exit code 1 too; only SystemExit is deliberate.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


def listed(output: str) -> list[tuple[str, str, str]]:
    """(id, type, status) of each row `events` printed, in order."""
    lines = output.splitlines()
    if lines == ["no events match"]:
        return []
    assert lines[0].split()[:3] == ["id", "type", "status"], output
    return [tuple(line.split()[:3]) for line in lines[1:]]


def checkout(factory: EventFactory, user: uuid.UUID | str, customer: str = "cus_1") -> Delivery:
    """Checkout of sub_1 by `user`; a stranger (an unknown uuid) buys no subscription."""
    return factory.checkout_completed(
        customer=customer,
        subscription="sub_1" if customer == "cus_1" else None,
        client_reference_id=str(user),
    )


def subscription(
    factory: EventFactory,
    event_type: str,
    price: str,
    *,
    status: str = "active",
    customer: str = "cus_1",
    sub_id: str = "sub_1",
) -> Delivery:
    factory.tick(60)
    return factory.subscription(
        event_type, sub_id=sub_id, customer=customer, status=status, price_ids=[price]
    )


def age(conn: psycopg.Connection, ids: list[str], interval: str) -> None:
    """Pretend the events arrived `interval` ago."""
    conn.execute(
        "update webhook_private.events set received_at = now() - %s::interval where id = any(%s)",
        (interval, ids),
    )


def history_lines(show_output: str) -> list[list[str]]:
    """[trigger, outcome] of each history line `events show` printed."""
    head = show_output.split("\npayload:", 1)[0]
    return [line.split()[2:4] for line in head.splitlines() if line.startswith("  ")]


def attempts(conn: psycopg.Connection, event_id: str) -> list[tuple[str, str]]:
    return conn.execute(
        "select trigger, outcome from webhook_private.event_attempts where event_id = %s"
        " order by id",
        (event_id,),
    ).fetchall()


# --- events ---------------------------------------------------------------------------------


@pytest.fixture
def inbox(conn, plans, user, stripe: StripeSender, factory: EventFactory) -> dict[str, Delivery]:
    """Four stored events, sent in this order: processed, processed, ignored, failed."""
    deliveries = {
        "checkout": checkout(factory, user),
        "created": subscription(factory, "customer.subscription.created", "price_pro"),
        "charge": factory.other("charge.succeeded"),
        "stranger": checkout(factory, uuid.uuid4(), customer="cus_stranger"),
    }
    stripe.send_all(deliveries.values())
    assert event_status(conn, deliveries["charge"].id)[0] == "ignored"
    assert event_status(conn, deliveries["stranger"].id)[0] == "failed"
    return deliveries


def test_events_lists_every_stored_event_newest_first(db_url, inbox) -> None:
    rows = listed(succeeds(run(db_url, "events")))
    assert rows == [
        (inbox["stranger"].id, "checkout.session.completed", "failed"),
        (inbox["charge"].id, "charge.succeeded", "ignored"),
        (inbox["created"].id, "customer.subscription.created", "processed"),
        (inbox["checkout"].id, "checkout.session.completed", "processed"),
    ]


def test_events_filters(conn, db_url, inbox) -> None:
    failed = listed(succeeds(run(db_url, "events", "--status", "failed")))
    assert failed == [(inbox["stranger"].id, "checkout.session.completed", "failed")]

    checkouts = listed(succeeds(run(db_url, "events", "--type", "checkout.session.completed")))
    assert [row[0] for row in checkouts] == [inbox["stranger"].id, inbox["checkout"].id]

    both = run(db_url, "events", "--type", "checkout.session.completed", "--status", "processed")
    assert [row[0] for row in listed(succeeds(both))] == [inbox["checkout"].id]

    newest = listed(succeeds(run(db_url, "events", "--limit", "2")))
    assert [row[0] for row in newest] == [inbox["stranger"].id, inbox["charge"].id]

    age(conn, [inbox["checkout"].id, inbox["created"].id], "2 hours")
    recent = listed(succeeds(run(db_url, "events", "--since", "1h")))
    assert [row[0] for row in recent] == [inbox["stranger"].id, inbox["charge"].id]
    day = listed(succeeds(run(db_url, "events", "--since", "1d")))
    assert len(day) == 4

    none = succeeds(run(db_url, "events", "--type", "invoice.paid"))
    assert none.splitlines() == ["no events match"]


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "soon"],
        ["--since", "0h"],
        ["--since", "5y"],
        ["--since", ""],
        ["--limit", "0"],
        ["--status", "lost"],
    ],
)
def test_events_rejects_bad_filters(db_url, args) -> None:
    line = fails(run(db_url, "events", *args), code=2)
    assert args[0] in line


@pytest.mark.parametrize(
    "args",
    [
        ["events", "--since", "99999999d"],
        ["purge", "--older-than", "3000000d"],
        ["purge", "--older-than", "99999999999d"],
        ["sync", "--events", "--since", "99999999999d"],
    ],
)
def test_a_duration_beyond_a_century_is_refused_in_one_line(db_url, args) -> None:
    line = fails(run(db_url, *args), code=2)
    assert "at most 36500d" in line


@pytest.mark.parametrize(
    "args",
    [
        ["events"],
        ["events", "show", "evt_1"],
        ["purge", "--older-than", "30d"],
        ["customer", str(uuid.UUID(int=7))],
    ],
)
def test_commands_on_a_database_without_the_schema_say_to_migrate(empty_db_url, args) -> None:
    line = fails(run(empty_db_url, *args))
    assert "lacks this version's schema" in line and "python -m webhook migrate" in line


def test_a_bad_since_names_the_accepted_form(db_url) -> None:
    line = fails(run(db_url, "events", "--since", "soon"), code=2)
    assert "'soon'" in line
    assert "90d" in line


def test_events_show_prints_fields_history_and_payload(db_url, inbox) -> None:
    stranger = inbox["stranger"]
    output = succeeds(run(db_url, "events", "show", stranger.id))
    head, payload = output.split("payload:\n", 1)
    fields = dict(
        line.split(":", 1) for line in head.splitlines() if not line.startswith((" ", "history:"))
    )
    fields = {name: value.strip() for name, value in fields.items()}
    assert fields["id"] == stranger.id
    assert fields["type"] == "checkout.session.completed"
    assert fields["api_version"] == stranger.event["api_version"]
    assert fields["status"] == "failed"
    assert "no customer" in fields["error"]
    assert fields["deliveries"] == "1"
    assert "purged_at" not in fields
    assert history_lines(output) == [["delivery", "failed"]]
    assert json.loads(payload) == stranger.event


def test_events_show_prints_a_payload_nested_deeper_than_json_walks_as_stored(
    conn, db_url, stripe: StripeSender, factory: EventFactory
) -> None:
    """The edge stores what orjson reads (1,024 levels); Python's json stops near 1,000."""
    event = factory.other("charge.succeeded").event
    event["data"]["object"]["deep"] = "DEEP"
    text = json.dumps(event).replace('"DEEP"', "[" * 1015 + "]" * 1015)
    stripe.send_all([Delivery(event=event, body=text.encode())])  # event: for its id
    output = succeeds(run(db_url, "events", "show", event["id"]))
    assert output.split("payload:\n", 1)[1].strip() == text


def test_events_show_of_an_unknown_id(db_url, inbox) -> None:
    line = fails(run(db_url, "events", "show", "evt_does_not_exist"))
    assert "evt_does_not_exist" in line


# --- customer -------------------------------------------------------------------------------


def test_customer_shows_plan_and_remaining_resources(
    conn, db_url, plans, user, stripe, factory
) -> None:
    stripe.send_all(
        [
            checkout(factory, user),
            subscription(factory, "customer.subscription.created", "price_pro"),
        ]
    )
    conn.execute("select public.consume_resources(%s, 'api_calls', 10)", (user,))
    lines = succeeds(run(db_url, "customer", str(user))).splitlines()
    assert lines[0].split() == ["plan:", "Pro", "(19.99)"]
    assert '"api_calls": 4990' in next(line for line in lines if line.startswith("remaining:"))
    assert '"api_calls": 5000' in next(line for line in lines if line.startswith("of:"))
    assert "cus_1" in next(line for line in lines if line.startswith("stripe:"))
    assert [line.split()[1] for line in lines if line.startswith("history:")] == ["Pro"]


def test_customer_without_a_plan(db_url, user) -> None:
    lines = succeeds(run(db_url, "customer", str(user))).splitlines()
    assert lines[0].split() == ["plan:", "(none)"]
    assert "(not linked)" in next(line for line in lines if line.startswith("stripe:"))


def test_customer_rejects_a_bad_or_unknown_uuid(db_url, user) -> None:
    assert "'not-a-uuid' is not a uuid" in fails(run(db_url, "customer", "not-a-uuid"))
    stranger = uuid.uuid4()
    assert str(stranger) in fails(run(db_url, "customer", str(stranger)))


# --- replay ---------------------------------------------------------------------------------


@pytest.fixture
def failed_signup(conn, plans, user, stripe, factory) -> str:
    """The user checked out, then subscribed to a price no plan sells: that event failed."""
    created = subscription(factory, "customer.subscription.created", "price_team")
    stripe.send_all([checkout(factory, user), created])
    status, error = event_status(conn, created.id)
    assert status == "failed"
    assert "price_team" in error
    assert customer_state(conn, user)["plan_id"] is None
    return created.id


def test_replay_dry_run_reports_and_changes_nothing(conn, db_url, user, failed_signup) -> None:
    team = conn.execute(TEAM_PLAN).fetchone()[0]
    before = customer_state(conn, user)
    output = succeeds(run(db_url, "replay", failed_signup, "--dry-run"))
    assert f"{failed_signup} customer.subscription.created: processed; plan None -> {team}" in (
        output
    )
    assert output.splitlines()[-1] == "dry run, nothing kept: replayed 1 event(s), 0 still failing"
    assert customer_state(conn, user) == before
    assert event_status(conn, failed_signup)[0] == "failed"
    assert attempts(conn, failed_signup) == [("delivery", "failed")]


def test_replay_failed_applies_once_the_plan_exists(conn, db_url, user, failed_signup) -> None:
    repair = run(db_url, "replay", "--failed")
    assert repair.exit_code == 1  # still failing: a script can tell
    assert isinstance(repair.exception, SystemExit) and "Traceback" not in repair.output
    still = repair.stdout
    assert f"{failed_signup} customer.subscription.created: failed" in still
    assert still.splitlines()[-1] == "replayed 1 event(s), 1 still failing"
    assert customer_state(conn, user)["plan_id"] is None

    team = conn.execute(TEAM_PLAN).fetchone()[0]
    output = succeeds(run(db_url, "replay", "--failed"))
    assert f"plan None -> {team}" in output
    assert output.splitlines()[-1] == "replayed 1 event(s), 0 still failing"
    assert event_status(conn, failed_signup) == ("processed", None)
    assert customer_state(conn, user)["plan_id"] == team
    assert customer_state(conn, user)["remaining_resources"] == {"api_calls": 9000}
    assert attempts(conn, failed_signup) == [
        ("delivery", "failed"),
        ("replay", "failed"),
        ("replay", "processed"),
    ]
    history = succeeds(run(db_url, "events", "show", failed_signup))
    assert "status:       processed" in history
    assert history_lines(history) == [
        ["delivery", "failed"],
        ["replay", "failed"],
        ["replay", "processed"],
    ]
    # Nothing is left to replay.
    nothing = succeeds(run(db_url, "replay", "--failed"))
    assert nothing.splitlines() == ["replayed 0 event(s), 0 still failing"]


def test_dismiss_settles_a_failed_event_with_its_reason(conn, db_url, failed_signup) -> None:
    result = run(db_url, "events", "dismiss", failed_signup, "--reason", "test price, never sold")
    succeeds(result)
    assert result.stdout.splitlines() == [f"dismissed {failed_signup}"]
    # Its subscription state stays mirrored, with a price no plan sells: said, not hidden.
    assert result.stderr.startswith("note: the subscription state they carried stays")
    assert event_status(conn, failed_signup) == ("ignored", "dismissed: test price, never sold")
    assert attempts(conn, failed_signup) == [("delivery", "failed"), ("operator", "ignored")]
    shown = succeeds(run(db_url, "events", "show", failed_signup))
    assert history_lines(shown)[-1] == ["operator", "ignored"]
    assert succeeds(run(db_url, "replay", "--failed")).splitlines() == [
        "replayed 0 event(s), 0 still failing"
    ]
    assert "ok   failed events: 0" in doctor(db_url).output


@pytest.mark.parametrize("other", ["settled", "unknown"])
def test_dismiss_is_all_or_nothing(conn, db_url, stripe, factory, failed_signup, other) -> None:
    second = "evt_nowhere"
    if other == "settled":
        charge = factory.other("charge.succeeded")
        stripe.send(charge)
        second = charge.id
    line = fails(run(db_url, "events", "dismiss", failed_signup, second, "--reason", "x"))
    assert second in line and "nothing was dismissed" in line
    assert event_status(conn, failed_signup)[0] == "failed"


def test_dismiss_needs_a_reason(db_url, failed_signup) -> None:
    assert "--reason" in fails(run(db_url, "events", "dismiss", failed_signup), code=2)
    assert "reason" in fails(
        run(db_url, "events", "dismiss", failed_signup, "--reason", "  "), code=2
    )


def test_replay_failed_with_type_only_replays_that_type(
    conn, db_url, plans, user, stripe, factory
) -> None:
    # Built in delivery order: the factory's clock orders the subscription events.
    signup = checkout(factory, user)
    created = subscription(factory, "customer.subscription.created", "price_basic")
    stranger = checkout(factory, uuid.uuid4(), customer="cus_stranger")
    upgrade = subscription(factory, "customer.subscription.updated", "price_team")
    stripe.send_all([signup, created, stranger, upgrade])
    assert event_status(conn, stranger.id)[0] == "failed"
    assert event_status(conn, upgrade.id)[0] == "failed"
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]
    team = conn.execute(TEAM_PLAN).fetchone()[0]

    output = succeeds(run(db_url, "replay", "--failed", "--type", "customer.subscription.updated"))
    assert upgrade.id in output
    assert stranger.id not in output
    assert f"plan {plans['Basic']} -> {team}" in output
    assert event_status(conn, upgrade.id) == ("processed", None)
    assert event_status(conn, stranger.id)[0] == "failed"
    assert attempts(conn, stranger.id) == [("delivery", "failed")]
    assert customer_state(conn, user)["plan_id"] == team


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["evt_1", "--failed"],
        ["evt_1", "--type", "customer.subscription.updated"],
        ["--dry-run"],
    ],
)
def test_replay_usage_errors(db_url, args) -> None:
    line = fails(run(db_url, "replay", *args), code=2)
    assert "--failed" in line


def test_replay_of_an_unknown_id(db_url) -> None:
    line = fails(run(db_url, "replay", "evt_does_not_exist"))
    assert "no event evt_does_not_exist" in line
    assert "purged" not in line


def test_replay_with_one_unknown_id_replays_none_of_them(conn, db_url, user, failed_signup) -> None:
    team = conn.execute(TEAM_PLAN).fetchone()[0]
    assert team
    line = fails(run(db_url, "replay", failed_signup, "evt_does_not_exist"))
    assert "evt_does_not_exist" in line
    assert event_status(conn, failed_signup)[0] == "failed"
    assert customer_state(conn, user)["plan_id"] is None
    assert attempts(conn, failed_signup) == [("delivery", "failed")]


def test_replay_of_a_purged_event_says_so(conn, db_url, plans, user, stripe, factory) -> None:
    delivery = checkout(factory, user)
    stripe.send_all([delivery])
    age(conn, [delivery.id], "100 days")
    succeeds(run(db_url, "purge", "--older-than", "90d"))
    line = fails(run(db_url, "replay", delivery.id))
    assert delivery.id in line
    assert "purged" in line


# --- reconcile ------------------------------------------------------------------------------


def test_reconcile_dry_run_then_for_real(conn, db_url, plans, make_user, stripe, factory) -> None:
    subscriber = make_user()
    by_hand = make_user()
    conn.execute("update public.customer set plan_id = %s where uuid = %s", (plans["Pro"], by_hand))
    created = subscription(factory, "customer.subscription.created", "price_team")
    stripe.send_all([checkout(factory, subscriber), created])
    assert event_status(conn, created.id)[0] == "failed"

    waiting = succeeds(run(db_url, "reconcile"))
    assert f"left {subscriber} as is: no plan for price(s) price_team" in waiting
    assert waiting.splitlines()[-1] == "checked 1 customer(s); 0 changed; 1 waiting for a plan"

    team = conn.execute(TEAM_PLAN).fetchone()[0]
    before = outcome_rows(conn)
    dry = succeeds(run(db_url, "reconcile", "--dry-run"))
    assert f"would change {subscriber}: plan None -> {team}" in dry
    assert dry.splitlines()[-1] == "checked 1 customer(s); 1 would change; 0 waiting for a plan"
    assert outcome_rows(conn) == before
    assert customer_state(conn, subscriber)["plan_id"] is None

    real = succeeds(run(db_url, "reconcile"))
    assert f"changed {subscriber}: plan None -> {team}" in real
    assert real.splitlines()[-1] == "checked 1 customer(s); 1 changed; 0 waiting for a plan"
    assert customer_state(conn, subscriber)["plan_id"] == team
    assert customer_state(conn, subscriber)["remaining_resources"] == {"api_calls": 9000}

    # The plan set by hand, for a customer Stripe knows nothing about, is left alone.
    assert str(by_hand) not in dry + real
    assert customer_state(conn, by_hand)["plan_id"] == plans["Pro"]

    again = succeeds(run(db_url, "reconcile"))
    assert again.splitlines() == ["checked 1 customer(s); 0 changed; 0 waiting for a plan"]


# --- purge ----------------------------------------------------------------------------------


def payload_state(conn: psycopg.Connection, event_id: str) -> tuple[bool, bool, int]:
    """(payload kept, purged_at set, deliveries) of a stored event."""
    row = conn.execute(
        "select payload is not null, purged_at is not null, deliveries"
        " from webhook_private.events where id = %s",
        (event_id,),
    ).fetchone()
    assert row is not None
    return row


def test_purge_drops_old_settled_payloads_only(conn, db_url, plans, user, stripe, factory) -> None:
    old_checkout = checkout(factory, user)
    old_created = subscription(factory, "customer.subscription.created", "price_basic")
    old_ignored = factory.other("charge.succeeded")
    old_failed = checkout(factory, uuid.uuid4(), customer="cus_stranger")
    recent = subscription(factory, "customer.subscription.updated", "price_pro")
    stripe.send_all([old_checkout, old_created, old_ignored, old_failed, recent])
    old = [old_checkout.id, old_created.id, old_ignored.id, old_failed.id]
    age(conn, old, "100 days")

    counted = succeeds(run(db_url, "purge", "--older-than", "90d", "--dry-run"))
    assert counted.strip() == "would purge the payloads of 3 event(s) older than 90 days"
    assert payload_state(conn, old_checkout.id) == (True, False, 1)
    output = succeeds(run(db_url, "purge", "--older-than", "90d"))
    assert output.startswith("purged the payloads of 3 event(s)")
    for event_id in (old_checkout.id, old_created.id, old_ignored.id):
        assert payload_state(conn, event_id) == (False, True, 1)
    assert payload_state(conn, old_failed.id) == (True, False, 1)
    assert payload_state(conn, recent.id) == (True, False, 1)
    shown = succeeds(run(db_url, "events", "show", old_created.id))
    assert "payload: (purged)" in shown
    assert "purged_at:" in shown

    # A late redelivery of a purged event is still recognised: acknowledged, nothing changes.
    before = outcome_rows(conn)
    plan = customer_state(conn, user)
    response = stripe.send(old_created)
    assert response.status_code == 200
    assert response.get_json()["duplicate"] is True
    assert outcome_rows(conn) == before
    assert customer_state(conn, user) == plan
    assert plan["plan_id"] == plans["Pro"]
    assert payload_state(conn, old_created.id) == (False, True, 2)

    again = succeeds(run(db_url, "purge", "--older-than", "90d"))
    assert again.startswith("purged the payloads of 0 event(s)")


def test_purge_of_recent_events_needs_yes(conn, db_url, stripe, factory) -> None:
    charge = factory.other("charge.succeeded")
    stripe.send(charge)
    age(conn, [charge.id], "2 hours")
    line = fails(run(db_url, "purge", "--older-than", "90m"), code=2)
    assert "90 minutes" in line and "--yes" in line
    assert payload_state(conn, charge.id) == (True, False, 1)
    output = succeeds(run(db_url, "purge", "--older-than", "90m", "--yes"))
    assert output.startswith("purged the payloads of 1 event(s) older than 90 minutes")


@pytest.mark.parametrize("args", [["--older-than", "soon"], ["--older-than", "0d"], []])
def test_purge_rejects_a_bad_or_missing_age(db_url, args) -> None:
    line = fails(run(db_url, "purge", *args), code=2)
    assert "--older-than" in line


# --- doctor ---------------------------------------------------------------------------------


def doctor(db_url: str, **env: str | None) -> Result:
    return run(db_url, "doctor", env={"STRIPE_WEBHOOK_SECRET": SECRET, **env})


def test_doctor_on_a_healthy_database(db_url, plans) -> None:
    output = succeeds(doctor(db_url))
    assert "FIX" not in output
    assert "ok   database: reachable" in output
    assert "ok   web line: port " in output
    assert "ok   plans with neither a Stripe price nor a product: none" in output
    assert "ok   failed events: 0" in output
    assert output.splitlines()[-1] == "all good"


def test_doctor_names_each_problem_and_what_to_do(
    conn, db_url, plans, user, stripe, factory
) -> None:
    conn.execute(
        "insert into public.plans (name, price, resources) values ('Legacy', 5, '{\"api_calls\": 1}')"
    )
    created = subscription(factory, "customer.subscription.created", "price_team")
    stripe.send_all([checkout(factory, user), created])
    assert event_status(conn, created.id)[0] == "failed"

    result = doctor(db_url)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.output.splitlines()

    def advice_for(problem: str) -> str:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"FIX  {problem}"))
        assert lines[index + 1].startswith("     -> "), result.output
        return lines[index + 1]

    assert "Legacy" in next(line for line in lines if line.startswith("FIX  plans with neither"))
    assert "stripe_product_id" in advice_for("plans with neither a Stripe price nor a product")
    assert "FIX  failed events: 1" in lines
    assert "replay --failed" in advice_for("failed events")
    assert "FIX  live subscriptions whose prices match no plan: 1" in lines
    assert "reconcile" in advice_for("live subscriptions whose prices match no plan")
    assert "3 thing(s) to fix" in result.output

    # Each fix, done as advised, clears its line; a product id is enough for a plan.
    conn.execute("update public.plans set stripe_product_id = 'prod_legacy' where name = 'Legacy'")
    conn.execute(TEAM_PLAN)
    succeeds(run(db_url, "replay", "--failed"))
    assert "all good" in succeeds(doctor(db_url))


def test_doctor_with_an_unreachable_database_hides_the_password() -> None:
    url = f"postgresql://operator:s3cret-pw-71@127.0.0.1:{closed_port()}/webhook"
    result = doctor(url)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "s3cret-pw-71" not in result.output
    database = [line for line in result.output.splitlines() if "database:" in line]
    assert len(database) == 1, result.output
    assert database[0].startswith("FIX  database: cannot reach the database at")
    assert "operator:***@127.0.0.1" in database[0]
    assert "1 thing(s) to fix" in result.output


def test_doctor_with_a_database_url_libpq_would_misread_says_how_to_write_it() -> None:
    result = doctor(f"postgresql://operator:s3cret/71@127.0.0.1:{closed_port()}/webhook")
    assert result.exit_code == 1, result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output
    database = [line for line in result.output.splitlines() if "database:" in line]
    assert len(database) == 1, result.output
    assert database[0].startswith("FIX  database: the database URL is not a connection string")
    assert "percent-encoded" in database[0]


def test_doctor_without_a_signing_secret(db_url, plans) -> None:
    result = doctor(db_url, STRIPE_WEBHOOK_SECRET=None)
    assert result.exit_code == 1, result.output
    assert "FIX  configuration: STRIPE_WEBHOOK_SECRET is not set" in result.output
    assert "1 thing(s) to fix" in result.output


def test_doctor_checks_what_the_web_line_refuses(db_url, plans) -> None:
    """Values that stop the Procfile's web line before gunicorn starts: doctor said
    "all good" with them."""
    result = doctor(
        db_url,
        PORT="abc",
        WEB_CONCURRENCY="abc",
        WEB_WORKER_CLASS="sync",
        WEB_ACCESS_LOG="yes",
        PROMETHEUS_MULTIPROC_DIR="/nonexistent/metrics",
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    fixes = [line for line in result.output.splitlines() if line.startswith("FIX")]
    assert fixes == [
        "FIX  web line: PORT must be a whole number, got 'abc'",
        "FIX  web line: WEB_CONCURRENCY must be a whole number, got 'abc'",
        "FIX  web line: WEB_WORKER_CLASS must be asgi or gthread, got 'sync'",
        "FIX  web line: WEB_ACCESS_LOG must be off or on, got 'yes'",
        "FIX  web line: PROMETHEUS_MULTIPROC_DIR must be an existing folder, got"
        " '/nonexistent/metrics': create it, or leave the variable unset and the web line"
        " makes one",
    ]
    assert result.output.splitlines()[-1] == "5 thing(s) to fix"


def test_doctor_names_a_bad_web_threads_once(db_url, plans) -> None:
    """The web line and load_settings both read WEB_THREADS: one line for it."""
    result = doctor(db_url, WEB_THREADS="0")
    assert result.exit_code == 1, result.output
    fixes = [line for line in result.output.splitlines() if line.startswith("FIX")]
    assert fixes == ["FIX  configuration: WEB_THREADS must be at least 1, got 0"]


def test_doctor_reports_a_bad_db_prepared_statements_once(db_url, plans) -> None:
    """Among the settings, not a second time as a fault of the database ("check
    DATABASE_URL and that the server is up")."""
    result = doctor(db_url, DB_PREPARED_STATEMENTS="maybe")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert [line for line in lines if line.startswith("FIX")] == [
        "FIX  configuration: DB_PREPARED_STATEMENTS must be on, off or auto, got 'maybe'"
    ]
    assert "ok   database: reachable" in lines
    assert lines[-1] == "1 thing(s) to fix"


def test_progress_shows_every_step_even_when_batches_jump_over_it(capsys) -> None:
    show = repair_commands._progress("replay")
    for done in (30, 60, 90, 120, 1000):  # steps of 50
        show(done, 1000)
    assert capsys.readouterr().err.splitlines() == [
        "replay: 60/1000",
        "replay: 120/1000",
        "replay: 1000/1000",
    ]
    quiet = repair_commands._progress("replay")
    quiet(50, 99)
    quiet(99, 99)
    assert capsys.readouterr().err == ""


def test_db_prepared_statements_is_checked_by_every_command(db_url) -> None:
    line = fails(run(db_url, "events", env={"DB_PREPARED_STATEMENTS": "maybe"}))
    assert "DB_PREPARED_STATEMENTS must be on, off or auto" in line
    succeeds(run(db_url, "reconcile", env={"DB_PREPARED_STATEMENTS": "off"}))


def test_replay_workers_out_of_range_is_a_usage_error(db_url) -> None:
    line = fails(run(db_url, "replay", "--failed", "--workers", "0"), code=2)
    assert "--workers" in line


def test_replay_failed_on_two_workers_applies_every_event(conn, db_url, monkeypatch) -> None:
    """Small batches, so that a short backlog takes the parallel path through the command."""
    from replay_histories import add_team_plan, history, prepare

    from webhook.pipeline import replay as replay_module

    monkeypatch.setattr(replay_module, "BATCH_EVENTS", 3)
    deliveries = history(1)
    prepare(conn, deliveries, backlog=True)
    add_team_plan(conn)
    backlog = conn.execute(
        "select count(*) from webhook_private.events where error = 'backlog'"
    ).fetchone()[0]

    output = succeeds(run(db_url, "replay", "--failed", "--workers", "2"))

    assert output.splitlines()[-1].startswith(f"replayed {backlog} event(s), ")
    assert conn.execute(
        "select count(*) filter (where error = 'backlog' or status = 'received'),"
        " count(*) filter (where attempts = 1 and error is distinct from 'backlog')"
        " from webhook_private.events where not type like 'checkout.%'"
    ).fetchone() == (0, backlog)


def test_replay_refuses_a_database_with_pending_migrations(conn, db_url) -> None:
    conn.execute("delete from webhook_private.schema_migrations where version = '015'")
    line = fails(run(db_url, "replay", "--failed"))
    assert "1 migration(s) pending; run `python -m webhook migrate` first" in line


@pytest.mark.parametrize(
    "command",
    [
        ["reconcile"],
        ["reconcile", "--dry-run"],
        ["sync"],
        ["sync", "--dry-run"],
        ["sync", "--events"],
    ],
)
def test_reconcile_and_sync_refuse_a_database_with_pending_migrations(
    conn, db_url, command
) -> None:
    """As replay, seed-plans, events dismiss and the drains do; sync before it asks Stripe
    anything (here nothing would answer)."""
    conn.execute("delete from webhook_private.schema_migrations where version = '015'")
    env = {"STRIPE_API_KEY": "sk_test_x", "STRIPE_API_BASE": f"http://127.0.0.1:{closed_port()}"}
    line = fails(run(db_url, *command, env=env))
    assert "1 migration(s) pending; run `python -m webhook migrate` first" in line


def test_reconcile_on_a_database_without_the_schema_says_to_migrate(empty_db_url) -> None:
    line = fails(run(empty_db_url, "reconcile"))
    assert "migration(s) pending; run `python -m webhook migrate` first" in line
