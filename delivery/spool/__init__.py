"""The spool: the queue in the database and every change to it.

    intake    durable acceptance (the listener's group commit), ICIDs
    doorbell  the one place that rings `delivery.tasks.deliver`, by task name
    lease     who holds a message and when it is due: claim, due, renew, release, postpone, kick
    plan      claimed messages -> groups of jobs per route, hosts in the order to try
    record    delivery reports -> recipients, attempts, mail-log lines, host health, bounces
    actions   the operator's audited actions: deliver now, bounce, delete, mark a host up
    journal   deliveries answered 250 and not yet recorded, recovered after a worker dies

The database is the truth. A message is delivered by whoever holds its lease (`Message.leased_by/leased_until`,
taken with a conditional UPDATE that works the same on PostgreSQL and SQLite); the lease is renewed while the
worker works, so it runs out only when the worker died, and then the next sweep hands the message to another.
A recipient moves queued → delivered / bounced / dropped / deleted, or → delayed (with its next attempt time)
and back. Everything that changes a recipient is one transaction with its attempts, its mail-log lines and the
host health it taught us, so the queue, the dashboard and `mail.current` always agree.
"""
