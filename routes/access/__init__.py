"""Who may send through the listener, as the operator edits it: the Recipient Access Table, relay networks and
SMTP AUTH users. `services` (audited writes), `forms`, `views` (the Access page) and `admin`; the listener's
decisions on these tables are `delivery.access`."""
