"""The inbound SMTP listener: aiosmtpd on `ESAROUTES_SMTP_LISTEN`, never an open relay, nothing lost after 250.

    server      `Listener` (the asyncio server, the ORM thread pools, ICIDs, access rules), `serve`,
                `ListenerThread` (tests, bench), `listen_socket`
    session     `Session`, the aiosmtpd `SMTP` subclass: one per connection
    handler     `Handler`: the SMTP decisions (HELO, MAIL, RCPT, DATA, AUTH), testable without a socket
    commit      `Committer`: the group commit of accepted messages
    conn        `Conn`: what the listener knows about one connection
    headers     pure message helpers: header values, Subject decoding, the Received header
    config      `Config` from the `ESAROUTES_SMTP_*` settings
    tls         the STARTTLS context and the self-signed certificate
    connlimits  the installation's connection limits, over every listener process
    sendtest    `send_test_message()`: the route test page and `manage.py sendtest`

Shape
- `Listener` owns the asyncio server (`loop.create_server`, IPv4 or IPv6), the connection counter (the
  installation's limits, over every listener process: `connlimits`), the cached `access.AccessSnapshot`
  (refreshed in the background at most every `ESAROUTES_SMTP_ACCESS_REFRESH` seconds, never on the RCPT path) and a
  bounded `ThreadPoolExecutor` (`ESAROUTES_SMTP_DB_THREADS`) for the ORM. Every database call is one sync function
  from `delivery.spool.intake` (one transaction each) run in that pool: not `sync_to_async`'s default single
  thread, which would serialise every session's commit behind the others; several commits in flight let
  PostgreSQL group their WAL flushes. A failed job closes its thread's connection, so a restarted database is
  reconnected on the next job, and `stop()` closes every thread's connection.
- `Session` (an aiosmtpd `SMTP` subclass, one per connection) adds what aiosmtpd lacks: connection limits (`421`
  before the greeting), a data timeout that restarts on every packet of DATA (aiosmtpd's own timer only restarts
  on commands), an error budget (`421` and disconnect after `ESAROUTES_SMTP_MAX_ERRORS` 5xx replies), the raw RCPT
  argument (aiosmtpd strips source routes before the handler sees the address), and the `ICID n close` line.
- `Handler` holds the SMTP decisions: relay or RAT at RCPT, recipient limit, AUTH checked off the loop, and the
  durable DATA: `250 2.0.0 Ok: queued as <MID>` only once `intake.accept_many` committed, `451 4.3.0` otherwise.

Log lines: `New SMTP ICID` and the policy line are buffered at connect (an ICID costs one sequence call, before
the greeting) and written in the transaction of the connection's first message, or with `ICID n close` when it
ends; every message's lines are written in the transaction that stores it.
"""
