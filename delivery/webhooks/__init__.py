"""Event webhooks: signed JSON POSTs to the URLs an operator registered, sent at least once from the database.

    models.py    Webhook (URL, events, secret), WebhookEvent (one row per event and webhook), WebhookAttempt
    events.py    the rows: written by the recorder in the transaction that changes the recipient's state
    send.py      the sender (a Celery task runs it): claims due rows, POSTs them signed, retries with back-off
    services.py  audited changes to the registrations (the page and the admin use them)

The delivery path only inserts rows (one bulk INSERT per recording transaction, none when no webhook wants the
event): no HTTP, no broker message. Delivery of the rows is `delivery.tasks.send_webhooks`, on Celery beat.
"""
