"""The operator pages: dashboard, mail log, message tracking, queue, hosts, domain status, audit log, and
`/metrics`. `views` (thin), `forms` (the pages' filters), `urls`, `selectors` (the reads the pages and the
operator commands share), `metrics` (Prometheus) and `templatetags` (mail log rendering). Nothing else in the
delivery side imports this package but its management commands, the command-line face of the same pages."""
