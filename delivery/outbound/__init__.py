"""The outbound side: the SMTP client (`smtp_client`), the delivery loop and its connection pool (`runner`),
host health and the round-robin position (`hosts`), and MX lookups (`dns`)."""
