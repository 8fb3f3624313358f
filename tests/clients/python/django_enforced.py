"""Django's ORM through Portcullis enforcing the finance example, as an agent developer would use
it: `inspectdb` generates models from the database, then the ORM reads, joins, aggregates,
creates, updates, upserts and deletes as support-bot (tenant 1, SSNs redacted, writes only to
its own tickets), once with USE_TZ on and once off (Django sets the session's TimeZone with
set_config when the server's differs). The auditor sees all 30 customers with hashed emails.

Usage: django_enforced.py USE_TZ DRIVER   (USE_TZ: on | off; DRIVER: psycopg | psycopg-bound |
psycopg2). Django uses psycopg 3 when installed, binding parameters client-side unless
`server_side_binding` is set (psycopg-bound: the extended protocol with parameters);
`psycopg2` hides psycopg 3 so Django falls back to it."""
import datetime
import io
import os
import sys
from urllib.parse import urlparse

USE_TZ = sys.argv[1] == "on"
DRIVER = sys.argv[2]
if DRIVER == "psycopg2":
    sys.modules["psycopg"] = None  # Django picks psycopg2 when psycopg 3 cannot be imported

import django
from django.conf import settings


def database(url):
    u = urlparse(url)
    options = {"server_side_binding": True} if DRIVER == "psycopg-bound" else {}
    return {
        "OPTIONS": options,
        "ENGINE": "django.db.backends.postgresql",
        "NAME": u.path.lstrip("/"),
        "USER": u.username,
        "PASSWORD": u.password,
        "HOST": u.hostname,
        "PORT": str(u.port),
    }


settings.configure(
    DATABASES={
        "default": database(os.environ["PORTCULLIS_URL"]),
        "auditor": database(os.environ["PORTCULLIS_AUDITOR_URL"]),
    },
    USE_TZ=USE_TZ,
    # Not UTC, so that Django sets the session's time zone itself.
    TIME_ZONE="America/Chicago",
    INSTALLED_APPS=["django.contrib.contenttypes"],
)
django.setup()

from django.core.management import call_command
from django.db import IntegrityError, ProgrammingError, connections, models, transaction
from django.db.models import Count, OuterRef, Q, Subquery, Sum

# inspectdb: Django's introspection (tables, columns, keys, constraints, indexes) under the
# agent's policy generates a model for every table.
out = io.StringIO()
call_command("inspectdb", "customers", "tickets", "transfers", stdout=out)
generated = out.getvalue()
for model in ("class Customers(models.Model):", "class Tickets(models.Model):", "class Transfers(models.Model):"):
    assert model in generated, generated
assert "customer = models.ForeignKey(Customers, models.DO_NOTHING)" in generated, generated
assert "currency = models.CharField(max_length=3)" in generated, generated
assert "amount = models.DecimalField(max_digits=12, decimal_places=2)" in generated, generated


class Customer(models.Model):
    tenant_id = models.IntegerField()
    name = models.TextField()
    email = models.TextField()
    ssn = models.TextField(blank=True, null=True)
    tier = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        app_label = "agentapp"
        managed = False
        db_table = "customers"


class Ticket(models.Model):
    tenant_id = models.IntegerField()
    customer = models.ForeignKey(Customer, models.DO_NOTHING)
    subject = models.TextField()
    body = models.TextField()
    status = models.TextField()
    priority = models.SmallIntegerField(default=3)
    opened_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "agentapp"
        managed = False
        db_table = "tickets"


class Transfer(models.Model):
    tenant_id = models.IntegerField()
    customer = models.ForeignKey(Customer, models.DO_NOTHING)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    iban = models.TextField()
    approved = models.BooleanField()
    created_at = models.DateTimeField()
    metadata = models.JSONField(blank=True, null=True)

    class Meta:
        app_label = "agentapp"
        managed = False
        db_table = "transfers"


def refused(fn):
    """Runs fn; returns the SQLSTATE and message of the refusal it must raise."""
    try:
        with transaction.atomic():
            fn()
    except (ProgrammingError, IntegrityError) as e:
        cause = e.__cause__
        return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None), str(e)
    raise SystemExit("expected a refusal")


# Reads: the tenant's rows only, the SSN redacted, in every shape the ORM builds.
assert Customer.objects.count() == 10
assert Customer.objects.filter(tenant_id=2).count() == 0
assert set(Customer.objects.values_list("tenant_id", flat=True)) == {1}
assert set(Customer.objects.values_list("ssn", flat=True)) <= {"***", None}
assert Customer.objects.filter(ssn__startswith="0").count() == 0, "filters see the mask"
assert Customer.objects.using("auditor").count() == 30
auditor_email = Customer.objects.using("auditor").order_by("id").values_list("email", flat=True)[0]
assert len(auditor_email) == 64 and "@" not in auditor_email, auditor_email

joined = list(Ticket.objects.select_related("customer").filter(customer__tier="standard").order_by("id")[:5])
assert joined and all(t.tenant_id == 1 and t.customer.tenant_id == 1 for t in joined)
assert all(t.customer.ssn in ("***", None) for t in joined)
by_status = dict(Ticket.objects.values_list("status").annotate(n=Count("id")))
assert sum(by_status.values()) == Ticket.objects.count() == 40, by_status
others = Ticket.objects.filter(tenant_id=3).values("customer_id")
assert Customer.objects.filter(Q(tenant_id=2) | Q(id__in=others)).count() == 0
assert Customer.objects.filter(id__in=Ticket.objects.values("customer_id")).count() == 10
n = Ticket.objects.filter(customer=OuterRef("pk")).values("customer").annotate(n=Count("id")).values("n")
assert sorted(set(Customer.objects.annotate(n=Subquery(n)).values_list("n", flat=True))) == [4]
total = Transfer.objects.aggregate(s=Sum("amount"))["s"]
assert total is not None and Transfer.objects.exclude(tenant_id=1).count() == 0
assert all(i.startswith("*") for i in Transfer.objects.values_list("iban", flat=True)), "IBAN last 4"
first = Customer.objects.order_by("id").first()
assert first.created_at.year == 2026
assert (first.created_at.tzinfo is not None) == USE_TZ, first.created_at
# A server-side cursor (DECLARE … CURSOR, FETCH) for .iterator().
assert sum(1 for _ in Customer.objects.order_by("id").iterator(chunk_size=3)) == 10

# Writes the policy allows: create, update, upsert and delete of the tenant's own tickets.
mine = Customer.objects.order_by("id").first()
opened = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc if USE_TZ else None)
t = Ticket.objects.create(tenant_id=1, customer=mine, subject="from django", body="b", status="open", priority=2)
assert t.pk is not None
assert Ticket.objects.filter(pk=t.pk).update(status="pending", opened_at=opened) == 1
t.refresh_from_db()
assert t.status == "pending"
with transaction.atomic():
    Ticket.objects.filter(pk=t.pk).update(status="closed")
    with transaction.atomic():  # a savepoint
        Ticket.objects.filter(pk=t.pk).update(subject="inner")
    assert Ticket.objects.get(pk=t.pk).subject == "inner"
upserted = Ticket.objects.bulk_create(
    [Ticket(id=t.pk, tenant_id=1, customer=mine, subject="upserted", body="b", status="closed", priority=2)],
    update_conflicts=True,
    unique_fields=["id"],
    update_fields=["subject"],
)
assert len(upserted) == 1 and Ticket.objects.get(pk=t.pk).subject == "upserted"

# Writes it does not: another tenant's row is invisible (0 rows), a new row of another tenant
# or a priority-1 ticket is refused with 42501 naming the policy, and nothing is written.
hidden = int(os.environ["HIDDEN_TICKET"])
assert Ticket.objects.filter(pk=hidden).update(status="closed") == 0
assert Ticket.objects.filter(pk=hidden).delete()[0] == 0
code, msg = refused(
    lambda: Ticket.objects.create(tenant_id=2, customer=mine, subject="x", body="b", status="open")
)
assert code == "42501" and "support-writes-own-tickets" in msg, (code, msg)
code, msg = refused(lambda: Ticket.objects.filter(pk=t.pk).update(priority=1))
assert code == "42501" and "no-agent-priority-one" in msg, (code, msg)
# An upsert that conflicts with another tenant's ticket is refused without touching it.
code, msg = refused(
    lambda: Ticket.objects.bulk_create(
        [Ticket(id=hidden, tenant_id=1, customer=mine, subject="taken", body="b", status="open")],
        update_conflicts=True,
        unique_fields=["id"],
        update_fields=["subject"],
    )
)
assert code == "42501", (code, msg)
assert Ticket.objects.using("auditor").get(pk=hidden).subject != "taken"
assert Ticket.objects.filter(subject="x").count() == 0
code, msg = refused(lambda: Customer.objects.filter(pk=mine.pk).update(ssn="123"))
assert code == "42501", (code, msg)
assert Ticket.objects.filter(pk=t.pk).delete()[0] == 1

# Raw SQL through the ORM's connection is rewritten the same way.
with connections["default"].cursor() as cur:
    cur.execute("select count(*) from customers where tenant_id <> %s", [1])
    assert cur.fetchone() == (0,)
print(f"OK django enforced (USE_TZ={sys.argv[1]}, {DRIVER})")
